"""kr's built-in plugins, one setuptools entry point each in the ``krouter.plugins`` group."""
