"""The layer every other one builds on: distances, the embedded gallery, ranking metrics,
checks, files and provenance."""
