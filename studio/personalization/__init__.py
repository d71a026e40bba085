"""Personalization (no UI): learned concepts as tokens on a private model copy (:mod:`.tokens`), their training
(:mod:`.training`), per-stage use (:mod:`.prospect`) and the file formats people exchange (:mod:`.formats`)."""
