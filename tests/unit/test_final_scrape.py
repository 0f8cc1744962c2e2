"""Rank 0's /metrics outlives the run until Prometheus has read the final values (spec.metrics.finalScrapeWaitSeconds).

Who uses it: ``make test``. A real ThreadingHTTPServer on loopback and real HTTP GETs; the waits are
bounded by thread joins far shorter than the configured limit, so a close() that ignored the scrape (or
waited although nobody ever scraped) fails instead of passing slowly.
"""

from __future__ import annotations

import threading
import urllib.request

from trainer.metrics import TrainerMetrics


def _scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return resp.read().decode()


def _close_in_thread(m: TrainerMetrics, wait_s: float) -> threading.Thread:
    t = threading.Thread(target=m.close, args=(wait_s,), daemon=True)
    t.start()
    return t


def test_close_waits_for_one_more_scrape_that_sees_the_final_step(tmp_path):
    m = TrainerMetrics("job", str(tmp_path), epochs=1, total_steps=10)
    port = m.serve(0, host="127.0.0.1")
    assert "kubeclip_trainer_step" in _scrape(port)  # Prometheus has been scraping during the run
    m.step.set(10)  # the last step
    closer = _close_in_thread(m, 120)
    closer.join(1.0)
    assert closer.is_alive(), "close() returned before the final scrape"
    _scrape(port, "/progress")  # the controller's /progress read is not a Prometheus scrape
    closer.join(1.0)
    assert closer.is_alive(), "a /progress read ended the wait for the final scrape"
    final = _scrape(port)
    assert 'kubeclip_trainer_step{finetunejob="job"} 10.0' in final
    closer.join(10)
    assert not closer.is_alive(), "close() still waiting after the final scrape"


def test_close_does_not_wait_when_nothing_ever_scraped(tmp_path):
    m = TrainerMetrics("job", str(tmp_path), epochs=1, total_steps=10)
    m.serve(0, host="127.0.0.1")
    closer = _close_in_thread(m, 120)
    closer.join(10)
    assert not closer.is_alive(), "close() waited for a scrape although /metrics was never scraped"


def test_close_gives_up_after_the_limit(tmp_path):
    m = TrainerMetrics("job", str(tmp_path), epochs=1, total_steps=10)
    port = m.serve(0, host="127.0.0.1")
    _scrape(port)
    closer = _close_in_thread(m, 0.5)  # the scraper went away: no further scrape comes
    closer.join(10)
    assert not closer.is_alive()
