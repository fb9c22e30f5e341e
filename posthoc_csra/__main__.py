"""``python -m posthoc_csra``: the same as ``posthoc-csra``."""
from .cli import main

main(prog_name="posthoc-csra")
