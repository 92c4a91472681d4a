"""One package per method. Each package's ``__init__`` declares ``METHOD`` (config, tables, checks);
its ``steps`` module plans and runs the work. ``neurodis.registry`` lists them in run order."""
