"""SVG models: ``SVG`` built from the ``model`` config section."""

from svg.models.svg import SVG, StepResult

__all__ = ["SVG", "StepResult"]
