"""Real data (skipped when ../shared/datasets is absent): the 2,002 photos are all kept."""

from __future__ import annotations

import pytest

from primer.data.verify import summarize, verify_images

from helpers.repo import shared_datasets

pytestmark = pytest.mark.realdata


def test_all_real_photos_kept():
    results = verify_images(shared_datasets() / "petimages", num_workers=0)
    summary = summarize(results)
    assert summary["kept"] == 2002 and summary["rejected"] == 0
    assert summary["kept/Cat"] == 1001 and summary["kept/Dog"] == 1001
    assert all(r.width >= 50 and r.height >= 50 for r in results)
