"""Importers that turn real public data sets into `root/<class>/<images>` folders."""
