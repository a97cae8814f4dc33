"""Who transacts, where, and how: card holders and merchants with their habits.

Fraud features only mean something against behaviour that is *individual*: a user's usual amount,
usual merchants, usual channel and country. So every user gets a profile (lognormal amount parameters,
a home country, channel preferences, a power-law activity weight and a handful of favourite merchants),
and merchants get a country and a Zipf popularity. All of it is drawn once from the seed, in arrays,
so that per-event choices are a few vectorised lookups.

>>> people = Population.build(users=50, merchants=20, seed=1)
>>> len(people.user_ids), people.user_ids[0], people.merchant_ids[0]
(50, 'u-0000000', 'm-000000')
>>> rng = np.random.default_rng(0)
>>> users = people.pick_users(rng, 5)
>>> bool(np.all(people.pick_merchants(rng, users) < people.merchants))
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CHANNELS",
    "COUNTRIES",
    "CURRENCIES",
    "FAVOURITES",
    "Population",
]

# Order is the Avro enum's (schemas/transaction.avsc), so an index is also the symbol's position there.
CHANNELS = ("POS", "ECOM", "ATM", "MOTO")
POS, ECOM, ATM, MOTO = range(4)
_CHANNEL_MIX = np.array([0.60, 0.28, 0.08, 0.04])

COUNTRIES = ("DE", "FR", "GB", "ES", "IT", "NL", "PL", "SE", "AT", "BE", "CH", "US")
CURRENCIES = ("EUR", "EUR", "GBP", "EUR", "EUR", "EUR", "PLN", "SEK", "EUR", "EUR", "CHF", "USD")
_COUNTRY_WEIGHTS = np.array([24, 18, 14, 10, 10, 6, 5, 3, 3, 3, 2, 2], dtype=np.float64)
# Merchants that appear after a drift are mostly cross-border e-commerce: a different country mix.
_NEW_MERCHANT_COUNTRY_WEIGHTS = np.array([4, 3, 15, 2, 2, 12, 2, 2, 1, 1, 6, 50], dtype=np.float64)

FAVOURITES = 6
# How a user picks among their favourites (first = the local supermarket) and how often they pick a
# favourite at all, another merchant at home, or one anywhere (travel, cross-border shopping).
_FAVOURITE_WEIGHTS = np.array([0.32, 0.22, 0.16, 0.12, 0.10, 0.08])
_P_FAVOURITE, _P_DOMESTIC = 0.75, 0.20

_MERCHANT_ZIPF = 1.1  # popularity ~ rank^-s
_ACTIVITY_PARETO = 1.5  # tail index of per-user activity; lower = a few users dominate more
_MIN_AMOUNT = 0.5
_MAX_AMOUNT = 50_000.0  # issuers' hard cap; keeps an unlucky draw from dwarfing every aggregate


def _normalised_cdf(weights: NDArray[np.float64]) -> NDArray[np.float64]:
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return cdf


def _draw(rng: np.random.Generator, cdf: NDArray[np.float64], n: int) -> NDArray[np.int64]:
    """Indices drawn from a categorical given by its CDF (cheaper than ``rng.choice(p=...)`` per call)."""
    picked: NDArray[np.int64] = np.searchsorted(cdf, rng.random(n), side="right")
    return np.minimum(picked, len(cdf) - 1)  # guards the cdf[-1] == 1 - eps rounding case


@dataclass(frozen=True, eq=False)
class _MerchantIndex:
    """Established merchants sorted by country, with their popularity CDF in that order: country ``c``
    owns the CDF slice ``[lo[c], hi[c])``, so "a popular merchant in c" is one vectorised searchsorted."""

    by_country: NDArray[np.int32]
    cdf: NDArray[np.float64]
    lo: NDArray[np.float64]
    hi: NDArray[np.float64]

    @classmethod
    def build(cls, country: NDArray[np.int64], popularity: NDArray[np.float64]) -> _MerchantIndex:
        by_country = np.argsort(country, kind="stable").astype(np.int32)
        cdf = _normalised_cdf(popularity[by_country])
        counts = np.bincount(country, minlength=len(COUNTRIES))
        ends = np.cumsum(counts)
        starts = ends - counts
        has = counts > 0
        # A country without merchants of its own shops anywhere: the whole [0, 1) slice.
        lo = np.where(has & (starts > 0), cdf[np.maximum(starts - 1, 0)], 0.0)
        hi = np.where(has, cdf[np.maximum(ends - 1, 0)], 1.0)
        return cls(by_country, cdf, lo, hi)

    def _at(self, target: NDArray[np.float64]) -> NDArray[np.int32]:
        position = np.minimum(np.searchsorted(self.cdf, target, side="right"), len(self.by_country) - 1)
        return self.by_country[position]

    def popular_in(self, rng: np.random.Generator, country: NDArray[np.int16]) -> NDArray[np.int32]:
        lo, hi = self.lo[country], self.hi[country]
        return self._at(lo + rng.random(len(country)) * (hi - lo))

    def popular(self, rng: np.random.Generator, n: int) -> NDArray[np.int32]:
        return self._at(rng.random(n))


@dataclass(frozen=True, eq=False)
class Population:
    """Users (indices ``0..users-1``) and merchants (``0..merchants-1`` established, then the ones that
    only appear after a drift), with the arrays that per-event choices index into."""

    user_ids: NDArray[np.object_]
    merchant_ids: NDArray[np.object_]
    merchants: int  # established merchants; ids from here on are the post-drift newcomers
    merchant_country: NDArray[np.int16]
    user_cdf: NDArray[np.float64]
    amount_mu: NDArray[np.float64]
    amount_sigma: NDArray[np.float64]
    home: NDArray[np.int16]
    channel_cdf: NDArray[np.float64]  # (users, len(CHANNELS))
    favourites: NDArray[np.int32]  # (users, FAVOURITES)
    index: _MerchantIndex

    @classmethod
    def build(cls, users: int, merchants: int, seed: int) -> Population:
        rng = np.random.default_rng((seed, 0x9E0))
        n_new = max(10, merchants // 4)

        home = _draw(rng, _normalised_cdf(_COUNTRY_WEIGHTS), users).astype(np.int16)
        established_country = _draw(rng, _normalised_cdf(_COUNTRY_WEIGHTS), merchants)
        new_country = _draw(rng, _normalised_cdf(_NEW_MERCHANT_COUNTRY_WEIGHTS), n_new)
        # Zipf popularity over a random ranking, so merchant 0 is not always the giant.
        popularity = np.asarray((1.0 + rng.permutation(merchants)) ** -_MERCHANT_ZIPF, dtype=np.float64)
        index = _MerchantIndex.build(established_country, popularity)

        activity = 1.0 + rng.pareto(_ACTIVITY_PARETO, users)
        amount_mu = rng.normal(3.2, 0.7, users)  # median ticket ~ EUR 25, varying a lot between users
        amount_sigma = rng.uniform(0.6, 1.2, users)
        channel_p = rng.dirichlet(_CHANNEL_MIX * 12, users)
        # Favourites are popular merchants of the user's home country.
        favourites = index.popular_in(rng, np.repeat(home, FAVOURITES)).reshape(users, FAVOURITES)

        return cls(
            user_ids=np.array([f"u-{i:07d}" for i in range(users)], dtype=object),
            merchant_ids=np.array([f"m-{i:06d}" for i in range(merchants + n_new)], dtype=object),
            merchants=merchants,
            merchant_country=np.concatenate([established_country, new_country]).astype(np.int16),
            user_cdf=_normalised_cdf(activity),
            amount_mu=amount_mu,
            amount_sigma=amount_sigma,
            home=home,
            channel_cdf=np.cumsum(channel_p, axis=1),
            favourites=favourites,
            index=index,
        )

    def pick_users(self, rng: np.random.Generator, n: int) -> NDArray[np.int32]:
        """Card holders of ``n`` ordinary transactions, weighted by activity (a few users do a lot)."""
        return _draw(rng, self.user_cdf, n).astype(np.int32)

    def pick_merchants(self, rng: np.random.Generator, users: NDArray[np.int32]) -> NDArray[np.int32]:
        """Mostly one of the user's favourites, sometimes another merchant at home, rarely anywhere."""
        n = len(users)
        roll = rng.random(n)
        slot = _draw(rng, _normalised_cdf(_FAVOURITE_WEIGHTS), n)
        chosen = self.favourites[users, slot]
        domestic = (roll >= _P_FAVOURITE) & (roll < _P_FAVOURITE + _P_DOMESTIC)
        chosen[domestic] = self.index.popular_in(rng, self.home[users[domestic]])
        anywhere = roll >= _P_FAVOURITE + _P_DOMESTIC
        chosen[anywhere] = self.index.popular(rng, int(anywhere.sum()))
        return chosen

    def pick_new_merchants(self, rng: np.random.Generator, n: int) -> NDArray[np.int32]:
        """Merchants that only exist after a drift (uniformly among them: no history, no popularity)."""
        return rng.integers(self.merchants, len(self.merchant_ids), n).astype(np.int32)

    def pick_strangers(self, rng: np.random.Generator, n: int) -> NDArray[np.int32]:
        """Established merchants regardless of popularity or country: where stolen cards get used."""
        return rng.integers(0, self.merchants, n).astype(np.int32)

    def pick_channels(self, rng: np.random.Generator, users: NDArray[np.int32]) -> NDArray[np.int8]:
        """Each user's own channel mix (some never use ATMs, some shop almost only online)."""
        roll = rng.random(len(users))
        channel: NDArray[np.int8] = (roll[:, None] >= self.channel_cdf[users]).sum(axis=1).astype(np.int8)
        return np.minimum(channel, len(CHANNELS) - 1).astype(np.int8)

    def amounts(
        self, rng: np.random.Generator, users: NDArray[np.int32], channels: NDArray[np.int8], *, boost: float = 0.0
    ) -> NDArray[np.float64]:
        """Lognormal amounts from each user's own parameters (heavy-tailed), shaped by channel, rounded to cents.

        ``boost`` shifts the log-mean: fraud buys more expensive things than the card holder does.
        """
        raw = np.exp(rng.normal(self.amount_mu[users] + boost, self.amount_sigma[users]))
        raw = np.where(channels == MOTO, raw * 1.6, raw)
        raw = np.where(channels == ECOM, raw * 1.1, raw)
        # Cash comes in notes: ATM withdrawals are multiples of 20, and larger than a typical purchase.
        raw = np.where(channels == ATM, np.maximum(20.0, np.round(raw * 2 / 20) * 20), raw)
        return np.round(np.clip(raw, _MIN_AMOUNT, _MAX_AMOUNT), 2)
