"""swift entry point: ``--custom_register_path`` / ``--external_plugins exgramed_plugin/register.py``.

Importing this file registers the ``exgra_med`` model type, template and datasets, and does nothing
else. swift imports it as a loose file (from a subprocess whose ``sys.path`` does not contain the
repository), so the package's parent folder is put on ``sys.path`` when the package is not
installed. Registration is idempotent.

swift stores the plugin path in the run's ``args.json`` exactly as typed and re-imports it in later
``swift infer/export/deploy --model <checkpoint>`` calls, relative to *their* working directory; so
when swift is importing this file we record its absolute path in the arguments being built.
"""

import importlib.util
import inspect
import os
import sys

_THIS_FILE = os.path.abspath(__file__)

if importlib.util.find_spec("exgramed_plugin") is None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(_THIS_FILE)))

from exgramed_plugin.swift_glue import register_all  # noqa: E402


def _record_absolute_plugin_path() -> None:
    for frame_info in inspect.stack()[1:]:
        if frame_info.function != "_import_external_plugins":
            continue
        args = frame_info.frame.f_locals.get("self")
        for attribute in ("external_plugins", "custom_register_path"):
            paths = getattr(args, attribute, None)
            if not isinstance(paths, list):
                continue
            for index, path in enumerate(paths):
                if isinstance(path, str) and os.path.abspath(os.path.expanduser(path)) == _THIS_FILE:
                    paths[index] = _THIS_FILE
        return


register_all()
_record_absolute_plugin_path()
