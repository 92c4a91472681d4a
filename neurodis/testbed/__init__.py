"""The ground-truth testbed: a synthetic world (:mod:`.world`), a CNN with planted neurons
(:mod:`.model`), its ground truth (:mod:`.truth`) and two oracle embedders (:mod:`.embedders`).
See docs/testbed.md. Importing this package imports nothing heavy."""
