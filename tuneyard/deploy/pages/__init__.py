"""Console pages for live models and deployment environments.

Importing the package registers every page. The deploy dialog the model pages open lives in
tuneyard.console.deploy_dialog.
"""

from tuneyard.deploy.pages import environments, live

__all__ = ["environments", "live"]
