"""DeepText in the console: chat with any model of the project, alone or side by side.

Importing the package registers both pages.
"""

from tuneyard.chat.pages import compare, conversation

__all__ = ["compare", "conversation"]
