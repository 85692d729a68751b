"""DERO: residual connections that span exactly one operator, for TinyML.

``yolo_dero.nn`` holds the DERO unit (torch only). The Ultralytics glue lives in submodules that
import Ultralytics on demand, so importing this package stays light.
"""

__version__ = "0.1.0"
