"""The embedding stage: CLIP/SigLIP/oracle embeddings of probe images, reference patches, PURE crops
and concept texts; calibration; faiss indexes (docs/embedding.md)."""

from neurodis.methods.embed.config import EmbedConfig
from neurodis.methods.embed.tables import TABLES
from neurodis.pipeline.method import Method

METHOD = Method(
    name="embed",
    stage="embed",
    title="Embeddings",
    config=EmbedConfig,
    tables=TABLES,
    namespaces=("embed", "embed-images"),
    runtime="neurodis.methods.embed.steps",
    requires=("forward",),
    preflight="neurodis.methods.embed.preflight",
)
