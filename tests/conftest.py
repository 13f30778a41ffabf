import os
import sys

# tests/ holds shared helpers (parity.py) imported by the test modules.
sys.path.insert(0, os.path.dirname(__file__))
