"""Tests of the object model, validation and codecs."""
