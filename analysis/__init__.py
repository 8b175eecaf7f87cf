"""Ranking trials on quality, speed and cost; reports and winners."""
