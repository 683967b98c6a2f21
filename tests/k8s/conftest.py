"""Fixtures for the Kubernetes checks: the pinned tools and a renderable copy of k8s/."""

from __future__ import annotations

import pytest

from k8s.render import Tree, provision


@pytest.fixture(scope="session")
def k8s_tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    """A copy of k8s/ with throw-away secret files; the tools are installed first."""
    provision()
    return Tree(tmp_path_factory.mktemp("k8s-tree"))
