"""An example advrank plugin: importing it registers one part of each kind."""

from advrank_example import attack, dataset, defense, model  # noqa: F401  (registration)
