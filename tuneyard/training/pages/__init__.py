"""Console pages for training: runs, new runs, live progress, comparing, profiles, methods.

Importing the package registers every page, in this order: the fixed paths /trainings/new and
/trainings/compare come before /trainings/{training_id}, which would match them too.
"""

import importlib

PAGES = ("runs", "new", "compare", "detail", "profiles", "methods")

for _page in PAGES:
    importlib.import_module(f"{__name__}.{_page}")
