"""Logging for the prolog and epilog: one line per event, to stderr (slurmd's log) and to syslog."""

from __future__ import annotations

import logging
import logging.handlers
import os

from hpk_slurm.log import setup_logging


def setup_script_logging(name: str) -> logging.Logger:
    logger = setup_logging(name)
    if os.path.exists("/dev/log"):
        try:
            handler = logging.handlers.SysLogHandler(address="/dev/log")
        except OSError:
            return logger
        handler.setFormatter(logging.Formatter(f"{name}[%(process)d]: %(levelname)s %(message)s"))
        logger.addHandler(handler)
    return logger
