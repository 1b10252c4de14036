"""Several people in one picture: who they are, where they go, and how their regions are worked out."""
