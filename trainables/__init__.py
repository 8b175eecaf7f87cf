"""One trial: load a base model, wrap it with a PEFT method, train, evaluate, report."""

import logging

# bitsandbytes tries to fetch an optional CPU kernel from the hub on import and warns on every
# process when it cannot; its own fallback is what runs offline, so the warning is noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
