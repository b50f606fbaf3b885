"""The package version, importable from anywhere in the package without importing its face."""
__version__ = "0.1.0"
