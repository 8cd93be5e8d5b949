"""Stop signals (prcl.stopping): what the first and the second SIGINT / SIGTERM do, and the exit status."""

from __future__ import annotations

import os
import signal

import pytest

from prcl.stopping import Stopped, stop_after_step, stop_raises


def test_after_step_the_first_signal_is_noted_and_the_second_raises(capfd):
    before = signal.getsignal(signal.SIGTERM)
    with stop_after_step("stopping soon") as received:
        os.kill(os.getpid(), signal.SIGTERM)
        assert received == [signal.SIGTERM]
        with pytest.raises(Stopped) as stop:
            os.kill(os.getpid(), signal.SIGINT)
    assert stop.value.exit_code == 130 and str(stop.value) == "stopped by SIGINT"
    assert capfd.readouterr().err == "prcl: SIGTERM: stopping soon; send it again to stop at once\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_under_stop_raises_each_signal_raises_a_keyboard_interrupt_with_its_exit_status():
    with stop_raises():
        for number, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
            with pytest.raises(KeyboardInterrupt) as stop:  # so `except Exception` does not swallow it
                os.kill(os.getpid(), number)
            assert isinstance(stop.value, Stopped) and stop.value.exit_code == code
    detailed = Stopped(signal.SIGTERM).with_detail("3 of 4 images written")
    assert str(detailed) == "stopped by SIGTERM; 3 of 4 images written" and detailed.exit_code == 143
