"""``python -m gradtrace`` is the ``gradtrace`` command."""

from .cli import main

main()
