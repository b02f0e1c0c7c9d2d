"""Configuration (lesson 07): the presets and their defaults, the checks a config passes before
anything is built, the vocabularies it may use, and every config -> object factory."""
