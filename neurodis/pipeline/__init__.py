"""The shape every method takes: a ``Method`` declares its config, tables and checks and plans its
work as ``Step``s of committed ``Unit``s; ``run_unit`` computes and commits one unit. No Ray here: the
runners and the one generic driver live in ``neurodis.orchestration``."""
