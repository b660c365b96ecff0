"""Parsers and TFDS builders for the real routing logs (no TensorFlow needed).

One module per log, each with a pure parser (`parse_*`: folder ->
`RoutingTable`) and a `tfds.core.GeneratorBasedBuilder` generating from it:

  routeprofile     `Routeprofile`    parse_routeprofile     600 x 8, exact cost
  llmrouter_seven  `LlmrouterSeven`  parse_llmrouter_seven  3,723 x 9, est. cost
  routellm         `Routellm`        parse_routellm         15,239 x 2, est. cost

Use `recal_jax.data.real.load_real_table(name)` rather than these directly.
"""

from recal_jax.data.builders.llmrouter_seven import LlmrouterSeven, parse_llmrouter_seven
from recal_jax.data.builders.routellm import Routellm, parse_routellm
from recal_jax.data.builders.routeprofile import Routeprofile, parse_routeprofile

# name -> (subfolder of the routing_data folder, parser, TFDS builder class).
REGISTRY = {
    "routeprofile": ("routeprofile", parse_routeprofile, Routeprofile),
    "llmrouter_seven": ("llmrouter", parse_llmrouter_seven, LlmrouterSeven),
    "routellm": ("routellm", parse_routellm, Routellm),
}

__all__ = [
    "LlmrouterSeven", "REGISTRY", "Routellm", "Routeprofile",
    "parse_llmrouter_seven", "parse_routellm", "parse_routeprofile",
]
