"""ExGra-Med (multi-graph alignment for medical VLMs) as an ms-swift plugin.

Importing this package registers nothing; swift registrations happen in
``exgramed_plugin/register.py`` (the file passed to ``--custom_register_path``).
"""

__version__ = "0.1.0"
