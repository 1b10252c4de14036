"""Identities saved and loaded by name: a person's reference faces kept in a file.

``names``: which file a name means (a plain name inside ``models/flashface_identities``);
``files``: the file format (safetensors, never pickle) and every check made on reading it;
``library``: save a person's references under a name, and load them back with a VAE,
re-encoding the saved crops when that VAE is not the one that encoded them.
"""
