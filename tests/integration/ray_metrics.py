"""Samples from the cluster's Ray metrics endpoints, as the integration tests read them."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families


def scrape(targets: list[str]) -> list:
    """Every sample from every Ray metrics endpoint of the cluster, parsed by prometheus_client."""
    samples = []
    for url in targets:
        try:
            text = requests.get(url, timeout=10).text
        except requests.RequestException:
            continue
        for family in text_string_to_metric_families(text):
            samples.extend(family.samples)
    return samples
