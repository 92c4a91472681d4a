"""Tools that read the tables of several methods (``neurodis diff``)."""
