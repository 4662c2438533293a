"""Config schema, loading and the generated reference."""

from kielo.config.load import CONFIG_FILE, load_config, save_config, to_dict
from kielo.config.schema import Config

__all__ = ["CONFIG_FILE", "Config", "load_config", "save_config", "to_dict"]
