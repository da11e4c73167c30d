"""An app file without the expected callable."""
something_else = 1
