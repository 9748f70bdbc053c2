"""Nash-MD on an exact game: pairs from the geometric mixture of pi_t and pi_ref."""

from __future__ import annotations

import numpy as np

from nlhf.lab.algorithms.base import omd_prior
from nlhf.lab.algorithms.inpo import INPO
from nlhf.losses import nash_md_loss


class NashMD(INPO):
    """Munos et al. 2023: play against and sample from mu_t ∝ pi_t^{1−tau/eta}·pi_ref^{tau/eta}."""

    name = "nash-md"
    loss = staticmethod(nash_md_loss)

    def sampling_logp(self) -> np.ndarray:
        return omd_prior(self.logp, self.log_ref, self.tau, self.eta)
