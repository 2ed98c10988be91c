//! The retry budget: how many retries a route may make, as a share of its recent requests.
//!
//! # Why a rate budget
//! A retry helps when a failure is rare and transient. When a dependency is overloaded, every
//! caller retries at once, each retry is more load on the thing that is already down, and every
//! proxy layer multiplies the attempts again (three retries at two hops is up to 16 attempts per
//! request). A fixed `num_retries` cannot tell the two situations apart; a *budget* can: retries
//! may be at most `budget_percent` of the requests seen in the last `window`, plus a small floor of
//! `min_retries_per_second` so a quiet route can still retry at all. When failures are rare the
//! budget is never felt; during a storm it caps the extra load at a known fraction.
//!
//! Envoy's own `retry_budget` bounds *concurrent* retries, which shrinks exactly when many
//! requests fail at once; Linkerd and Finagle bound the retry rate but per proxy process and
//! per client. This budget is a rate, and it is one number for all of Envoy's workers.
//!
//! # Mechanics: reserve first, refund the rest
//! The filter must decide how many retries to allow *before* the request is sent (it tells the
//! router with `x-envoy-max-retries`), but learns how many retries happened only when the request
//! ends. If permission were free and only the retries made were charged, a burst of concurrent
//! failures would spend many times the budget before the first charge arrived. So a request
//! *reserves* the retries it may make ([`LocalBudget::reserve`]): the tokens are charged to the
//! window at once, and when the request ends the unused part is refunded
//! ([`LocalBudget::settle`]). Retries made can therefore never exceed the budget, however many
//! requests fail at the same moment.
//!
//! # Mechanics: one budget, leased to workers
//! The window ([`SharedBudget`]) lives in the proxy's shared data and is changed only under
//! compare-and-swap. Paying a CAS for every request would cost several microseconds each, so each
//! worker holds a small *lease* of tokens, charged to the shared window when it was taken, and
//! reserves from it locally. A refund of a reservation taken from the current lease goes straight
//! back into the lease; everything else (requests seen, refunds of older leases, the unused
//! lease itself) is published on the worker's tick ([`SharedBudget::apply`]), which also hands out
//! the next lease, sized to the worker's recent peak of reservations. Only a worker whose lease
//! runs dry pays a CAS on the request path, and after finding the shared budget empty it does not
//! ask again for `empty_backoff_ms`.
//!
//! Every charge is made to the bucket of the time it happened, and a refund goes back to the
//! bucket it was charged to, or nowhere if that bucket has left the window. A worker that
//! disappears (its VM reloaded) therefore leaks nothing for longer than one window: its lease and
//! reservations are forgotten with their bucket. For the same reason a lease is only usable while
//! its bucket is in the window; an older lease is dropped and replaced.
//!
//! # Window mechanics
//! Like [`crate::window::TimeWindow`]: `buckets` slots of `window_ms / buckets`, keyed by epoch
//! `now_ms / width`, reused when stale. A request or charge is forgotten between
//! `(buckets − 1) × width` and `buckets × width` after it happened.
//!
//! Also here: [`parse_attempts`], the strict reader of attempt-count headers (`x-envoy-attempt-count`,
//! `grpc-previous-rpc-attempts`) that tells a retry from a first attempt.

use crate::codec::{DecodeError, Decoder, Encoder};

/// Most buckets a budget window keeps (each is 16 bytes of shared data).
pub const MAX_BUCKETS: u32 = 60;

/// Most tokens one lease holds: a bound on what one worker can take from the others at once.
pub const MAX_LEASE: u32 = 4096;

/// Most distinct buckets one worker keeps refunds for between publications; a refund that does
/// not fit is dropped, which only makes the budget stricter.
const MAX_REFUND_EPOCHS: usize = MAX_BUCKETS as usize;

/// Guards the floor of `percent × requests` against binary fractions (`29% × 100` is
/// `28.999999999999996` in `f64`).
const EPSILON: f64 = 1e-9;

/// The budget of one key, already validated by the filter's config layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetPolicy {
    /// Retries may be this percent (0–100) of the requests in the window.
    pub budget_percent: f64,
    /// Plus this many retries per second of window, whatever the traffic.
    pub min_retries_per_second: f64,
    /// The window, in ms.
    pub window_ms: u64,
    /// Buckets the window is split into (1–60).
    pub buckets: u32,
    /// When set, what one bucket may charge is capped at this percent (100 or more) of an even
    /// spread of the allowance over the window's buckets. Why: a window's unspent budget is
    /// otherwise spendable at once, so the start of a spike (after a quiet, saving steady phase)
    /// and the moment a heavily charged bucket leaves the window both let a burst of retries
    /// through. With the cap, retries flow at most this much faster than the budget's steady rate.
    pub burst_cap_percent: Option<f64>,
}

impl Default for BudgetPolicy {
    /// The defaults of Linkerd and Finagle: 20%, 10 retries per second, 10 s.
    fn default() -> Self {
        BudgetPolicy {
            budget_percent: 20.0,
            min_retries_per_second: 10.0,
            window_ms: 10_000,
            buckets: 10,
            burst_cap_percent: None,
        }
    }
}

impl BudgetPolicy {
    /// The floor: `min_retries_per_second × window` seconds, rounded down.
    pub fn floor_tokens(&self) -> u64 {
        to_tokens(self.min_retries_per_second * self.window_ms as f64 / 1000.0)
    }

    /// Retries allowed in a window that saw `requests`: `budget_percent` of them, rounded down,
    /// plus the floor.
    pub fn allowance(&self, requests: u64) -> u64 {
        to_tokens(self.budget_percent * requests as f64 / 100.0).saturating_add(self.floor_tokens())
    }

    /// How long a lease stays usable: while its bucket is surely still in the window.
    pub fn lease_ttl_ms(&self) -> u64 {
        let (width, count) = geometry(self.window_ms, self.buckets);
        width.saturating_mul(u64::from(count.saturating_sub(1)).max(1))
    }
}

/// A non-negative real number of tokens, rounded down; NaN and negatives are 0, huge is max.
fn to_tokens(x: f64) -> u64 {
    if x.is_nan() || x <= 0.0 {
        return 0;
    }
    let floored = (x + EPSILON).floor();
    if floored >= u64::MAX as f64 {
        u64::MAX
    } else {
        floored as u64
    }
}

/// Bucket width and count for a window: count clamped to 1..=60 and to at most `window_ms`.
fn geometry(window_ms: u64, buckets: u32) -> (u64, u32) {
    let window_ms = window_ms.max(1);
    let count = buckets
        .clamp(1, MAX_BUCKETS)
        .min(u32::try_from(window_ms).unwrap_or(u32::MAX));
    let width = (window_ms / u64::from(count)).max(1);
    (width, count)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Bucket {
    epoch: u64,
    requests: u32,
    charged: u32,
}

/// What a window holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Requests counted in the window.
    pub requests: u64,
    /// Tokens charged: retries made, reservations of requests still in flight, and leases.
    pub charged: u64,
}

/// One worker's news since its last publication.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Requests that count towards the allowance.
    pub requests: u32,
    /// Retries made beyond their reservation (charged now).
    pub extra: u32,
    /// Tokens given back, by the epoch of the bucket they were charged to.
    refunds: Vec<(u64, u32)>,
}

impl Delta {
    /// Give `amount` tokens back to the bucket of `epoch`.
    pub fn refund(&mut self, epoch: u64, amount: u32) {
        if amount == 0 {
            return;
        }
        if let Some(r) = self.refunds.iter_mut().find(|(e, _)| *e == epoch) {
            r.1 = r.1.saturating_add(amount);
        } else if self.refunds.len() < MAX_REFUND_EPOCHS {
            self.refunds.push((epoch, amount));
        } else if let Some(oldest) = self.refunds.iter_mut().min_by_key(|(e, _)| *e) {
            // Full: the oldest refund is the likeliest to have left the window anyway.
            if oldest.0 < epoch {
                *oldest = (epoch, amount);
            }
        }
    }

    /// The refunds, by epoch.
    pub fn refunds(&self) -> &[(u64, u32)] {
        &self.refunds
    }

    /// Tokens refunded in all.
    pub fn refunded(&self) -> u64 {
        self.refunds.iter().map(|(_, a)| u64::from(*a)).sum()
    }

    /// Nothing to publish.
    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.extra == 0 && self.refunds.is_empty()
    }
}

/// What a worker publishes: its news and the lease it asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Publication {
    pub delta: Delta,
    /// Tokens wanted for the next lease.
    pub want: u32,
    /// Fewer tokens than this cannot serve even one request; when scarce, at least this many
    /// (if available) are granted before splitting what is left.
    pub min_useful: u32,
}

/// Tokens held by a worker, charged to the bucket of `epoch` when they were granted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    pub epoch: u64,
    pub tokens: u32,
}

/// What [`SharedBudget::apply`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The worker's next lease.
    pub lease: Lease,
    /// Tokens that were available before this lease was granted.
    pub available: u64,
    /// Tokens neither charged nor leased after this call: the `budget_remaining` gauge.
    pub level: u64,
    /// How much to move the `budget_remaining` gauge by (see [`SharedBudget`]'s `level`).
    pub gauge_delta: i64,
}

const KIND: u8 = 0xB6;
const VERSION: u8 = 1;

/// One key's budget window as stored in shared data.
///
/// It also remembers the `budget_remaining` gauge value last published, so each writer can move
/// the cross-worker gauge by exactly the change it made: the increments of all workers then add
/// up to the level of the last write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedBudget {
    width_ms: u64,
    buckets: Vec<Bucket>,
    /// Newest epoch seen; time never runs backwards past it.
    head: u64,
    published_level: u64,
}

impl SharedBudget {
    /// An empty window shaped by `policy`.
    pub fn new(policy: &BudgetPolicy) -> Self {
        let (width_ms, count) = geometry(policy.window_ms, policy.buckets);
        SharedBudget {
            width_ms,
            buckets: vec![Bucket::default(); usize::try_from(count).unwrap_or(1)],
            head: 0,
            published_level: 0,
        }
    }

    /// Width of one bucket, in ms.
    pub fn width_ms(&self) -> u64 {
        self.width_ms
    }

    fn len(&self) -> u64 {
        u64::try_from(self.buckets.len()).unwrap_or(1).max(1)
    }

    /// The epoch of `now_ms`, never before the newest one seen.
    pub fn epoch_at(&self, now_ms: u64) -> u64 {
        (now_ms / self.width_ms.max(1)).max(self.head)
    }

    fn is_live(&self, bucket_epoch: u64, now_epoch: u64) -> bool {
        bucket_epoch <= now_epoch && now_epoch - bucket_epoch < self.len()
    }

    fn slot_index(&self, epoch: u64) -> Option<usize> {
        usize::try_from(epoch % self.len()).ok()
    }

    /// The bucket of `epoch`, emptied first if it still holds an older epoch.
    fn current(&mut self, epoch: u64) -> Option<&mut Bucket> {
        let i = self.slot_index(epoch)?;
        let slot = self.buckets.get_mut(i)?;
        if slot.epoch != epoch {
            *slot = Bucket {
                epoch,
                ..Bucket::default()
            };
        }
        Some(slot)
    }

    /// Requests and charges in the window ending at `now_ms`.
    pub fn totals(&self, now_ms: u64) -> Totals {
        self.totals_at(self.epoch_at(now_ms))
    }

    fn totals_at(&self, epoch: u64) -> Totals {
        let mut t = Totals::default();
        for b in &self.buckets {
            if self.is_live(b.epoch, epoch) {
                t.requests = t.requests.saturating_add(u64::from(b.requests));
                t.charged = t.charged.saturating_add(u64::from(b.charged));
            }
        }
        t
    }

    /// Tokens that may still be reserved now.
    pub fn available(&self, now_ms: u64, policy: &BudgetPolicy) -> u64 {
        self.spendable(now_ms, policy)
    }

    /// What the window's allowance leaves, capped when the policy paces (`burst_cap_percent`):
    /// the charges of the last bucket-width of time may not exceed the cap. That span is
    /// estimated, as sliding-window rate limiters do, by the current bucket's charges plus the
    /// previous bucket's in proportion to how much of it the span still covers; a cap per bucket
    /// alone would let two caps through in one width, at the end of one bucket and the start of
    /// the next.
    fn spendable(&self, now_ms: u64, policy: &BudgetPolicy) -> u64 {
        let epoch = self.epoch_at(now_ms);
        let t = self.totals_at(epoch);
        let allowance = policy.allowance(t.requests);
        let left = allowance.saturating_sub(t.charged);
        let Some(percent) = policy.burst_cap_percent else {
            return left;
        };
        let even = allowance as f64 / self.len() as f64;
        // Rounded down, so a width never spends more than the percent says (a small budget's
        // rounding would otherwise add up to a whole token to each width); but at least one
        // token a width, so a route whose budget rounds to less still retries.
        let cap = (even * percent / 100.0 + 1e-9).floor().max(1.0);
        let charged_in = |e: u64| {
            self.slot_index(e)
                .and_then(|i| self.buckets.get(i))
                .filter(|b| b.epoch == e && self.is_live(e, epoch))
                .map_or(0.0, |b| f64::from(b.charged))
        };
        let width = self.width_ms.max(1);
        // Time past the head bucket's start; 0 when the clock is behind the newest epoch seen.
        let into = if now_ms / width == epoch {
            (now_ms % width) as f64 / width as f64
        } else {
            0.0
        };
        let previous = epoch.checked_sub(1).map_or(0.0, charged_in);
        let recent = charged_in(epoch) + previous * (1.0 - into);
        let room = (cap - recent).max(0.0).floor();
        left.min(to_tokens(room))
    }

    /// The `budget_remaining` gauge value as last published.
    pub fn published_level(&self) -> u64 {
        self.published_level
    }

    fn refund(&mut self, epoch: u64, amount: u32, now_epoch: u64) {
        if !self.is_live(epoch, now_epoch) {
            return;
        }
        let Some(slot) = self.slot_index(epoch).and_then(|i| self.buckets.get_mut(i)) else {
            return;
        };
        if slot.epoch == epoch {
            slot.charged = slot.charged.saturating_sub(amount);
        }
    }

    /// Merge one worker's publication and grant its next lease, all at `now_ms`.
    ///
    /// Refunds go back to their own buckets (or nowhere once those left the window); requests and
    /// extra charges land in the current bucket. The lease is `want` tokens if that many are
    /// available; when fewer are, the worker gets at least `min_useful` (if there are that many)
    /// or half of what is left, so one worker cannot starve the others until its next tick.
    pub fn apply(
        &mut self,
        publication: &Publication,
        now_ms: u64,
        policy: &BudgetPolicy,
    ) -> Applied {
        let epoch = self.epoch_at(now_ms);
        self.head = epoch;
        for &(e, amount) in publication.delta.refunds() {
            self.refund(e, amount, epoch);
        }
        if let Some(cur) = self.current(epoch) {
            cur.requests = cur.requests.saturating_add(publication.delta.requests);
            cur.charged = cur.charged.saturating_add(publication.delta.extra);
        }
        let available = self.spendable(now_ms, policy);
        let grant = grant_size(available, publication.want, publication.min_useful);
        if let Some(cur) = self.current(epoch) {
            cur.charged = cur.charged.saturating_add(grant);
        }
        let level = available.saturating_sub(u64::from(grant));
        let gauge_delta = clamp_i64(i128::from(level) - i128::from(self.published_level));
        self.published_level = level;
        Applied {
            lease: Lease {
                epoch,
                tokens: grant,
            },
            available,
            level,
            gauge_delta,
        }
    }

    /// The compact binary form kept in shared data.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(KIND, VERSION);
        e.u64(self.width_ms)
            .u32(u32::try_from(self.buckets.len()).unwrap_or(MAX_BUCKETS))
            .u64(self.head)
            .u64(self.published_level);
        for b in &self.buckets {
            e.u64(b.epoch).u32(b.requests).u32(b.charged);
        }
        e.finish()
    }

    /// Decode shared data written by any worker.
    ///
    /// Garbage, another kind or another version is an error the caller counts before starting
    /// from [`SharedBudget::new`]. A window of another shape (the configuration changed since it
    /// was written) starts empty, keeping only the published gauge level so the gauge stays true.
    pub fn decode(bytes: &[u8], policy: &BudgetPolicy) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, KIND, VERSION)?;
        let width_ms = d.u64()?;
        let count = d.u32()?;
        let head = d.u64()?;
        let published_level = d.u64()?;
        if width_ms == 0 || count == 0 || count > MAX_BUCKETS {
            return Err(DecodeError::Invalid);
        }
        let mut buckets = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        for slot in 0..u64::from(count) {
            let b = Bucket {
                epoch: d.u64()?,
                requests: d.u32()?,
                charged: d.u32()?,
            };
            let empty = b.requests == 0 && b.charged == 0;
            if !empty && (b.epoch % u64::from(count) != slot || b.epoch > head) {
                return Err(DecodeError::Invalid);
            }
            buckets.push(b);
        }
        d.finish()?;
        let (want_width, want_count) = geometry(policy.window_ms, policy.buckets);
        if width_ms != want_width || count != want_count {
            let mut fresh = SharedBudget::new(policy);
            fresh.published_level = published_level;
            return Ok(fresh);
        }
        Ok(SharedBudget {
            width_ms,
            buckets,
            head,
            published_level,
        })
    }
}

fn clamp_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// The lease to grant from `available` tokens to a worker that wants `want`.
fn grant_size(available: u64, want: u32, min_useful: u32) -> u32 {
    let want = want.min(MAX_LEASE);
    if available >= u64::from(want) {
        return want;
    }
    let half = available / 2;
    let useful = available.min(u64::from(min_useful));
    u32::try_from(half.max(useful)).unwrap_or(want).min(want)
}

/// Tokens one request reserved: charged when reserved, partly refunded when it ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reservation {
    /// Retries this request may make.
    pub tokens: u32,
    generation: u32,
    epoch: u64,
    /// False when the tokens were not taken from the budget (the shared budget could not be
    /// reached and the filter failed open): every retry made is then charged when it ends.
    backed: bool,
}

impl Reservation {
    /// No retries reserved (denied, or nothing asked for).
    pub const NONE: Reservation = Reservation {
        tokens: 0,
        generation: 0,
        epoch: 0,
        backed: true,
    };

    /// Permission for `tokens` retries that the budget did not back (fail open).
    pub const fn unbacked(tokens: u32) -> Reservation {
        Reservation {
            tokens,
            generation: 0,
            epoch: 0,
            backed: false,
        }
    }
}

/// The answer of [`LocalBudget::reserve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserve {
    /// Reserved from the local lease; `tokens` may be fewer than asked (or 0) when the shared
    /// budget was recently found empty.
    Reserved(Reservation),
    /// The lease cannot cover the request: publish and take a new lease (a CAS), then call
    /// [`LocalBudget::reserve_after_refill`].
    NeedRefill,
}

/// One worker's side of one budget: its lease, the reservations it handed out, and what it has
/// not published yet. Pure: the host layer runs the CAS around [`SharedBudget::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalBudget {
    delta: Delta,
    lease: Lease,
    /// When the lease was granted.
    lease_ms: u64,
    /// Bumped whenever the lease is replaced; refunds of older reservations are published.
    generation: u32,
    /// Tokens held by requests in flight.
    reserved: u32,
    /// Most tokens held at once since the last publication (sizes the next lease).
    reserved_peak: u32,
    /// After the shared budget was found empty, no refill is asked for before this.
    empty_until_ms: u64,
    lease_ttl_ms: u64,
    empty_backoff_ms: u64,
}

impl LocalBudget {
    /// A worker with no lease yet. `empty_backoff_ms` is how long to wait before asking the shared
    /// budget again after it had nothing left (the filter uses its tick interval).
    pub fn new(policy: &BudgetPolicy, empty_backoff_ms: u64) -> Self {
        LocalBudget {
            delta: Delta::default(),
            lease: Lease::default(),
            lease_ms: 0,
            generation: 0,
            reserved: 0,
            reserved_peak: 0,
            empty_until_ms: 0,
            lease_ttl_ms: policy.lease_ttl_ms(),
            empty_backoff_ms,
        }
    }

    /// Count one request towards the allowance.
    pub fn record_request(&mut self) {
        self.delta.requests = self.delta.requests.saturating_add(1);
    }

    /// Tokens in the local lease.
    pub fn lease_tokens(&self) -> u32 {
        self.lease.tokens
    }

    /// Tokens held by requests in flight.
    pub fn reserved(&self) -> u32 {
        self.reserved
    }

    /// Unpublished news.
    pub fn delta(&self) -> &Delta {
        &self.delta
    }

    fn lease_is_stale(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.lease_ms) >= self.lease_ttl_ms
    }

    /// A lease whose bucket may have left the window is no longer backed by a charge: drop it.
    fn drop_stale_lease(&mut self, now_ms: u64) {
        if self.lease.tokens > 0 && self.lease_is_stale(now_ms) {
            self.lease.tokens = 0;
            self.generation = self.generation.wrapping_add(1);
        }
    }

    fn take(&mut self, n: u32) -> Reservation {
        let n = n.min(self.lease.tokens);
        self.lease.tokens -= n;
        self.reserved = self.reserved.saturating_add(n);
        self.reserved_peak = self.reserved_peak.max(self.reserved);
        Reservation {
            tokens: n,
            generation: self.generation,
            epoch: self.lease.epoch,
            backed: true,
        }
    }

    /// Reserve up to `max` retries for one request from the local lease.
    pub fn reserve(&mut self, max: u32, now_ms: u64) -> Reserve {
        if max == 0 {
            return Reserve::Reserved(Reservation::NONE);
        }
        self.drop_stale_lease(now_ms);
        if self.lease.tokens >= max || now_ms < self.empty_until_ms {
            return Reserve::Reserved(self.take(max));
        }
        Reserve::NeedRefill
    }

    /// Reserve after a refill (or after a refill failed): whatever the lease holds, up to `max`.
    pub fn reserve_after_refill(&mut self, max: u32, now_ms: u64) -> Reservation {
        self.drop_stale_lease(now_ms);
        self.take(max)
    }

    /// A request ended having made `used` retries: refund the rest of its reservation (into the
    /// lease when it came from the current one, else to its bucket at the next publication), or
    /// charge what it made beyond it.
    pub fn settle(&mut self, r: Reservation, used: u32, now_ms: u64) {
        if !r.backed {
            self.delta.extra = self.delta.extra.saturating_add(used);
            return;
        }
        self.reserved = self.reserved.saturating_sub(r.tokens);
        if used >= r.tokens {
            self.delta.extra = self.delta.extra.saturating_add(used - r.tokens);
            return;
        }
        let refund = r.tokens - used;
        if r.generation == self.generation && !self.lease_is_stale(now_ms) {
            self.lease.tokens = self.lease.tokens.saturating_add(refund);
        } else {
            self.delta.refund(r.epoch, refund);
        }
    }

    /// Whether the tick should publish: there is news, or the lease is half-way to stale.
    pub fn needs_publish(&self, now_ms: u64) -> bool {
        !self.delta.is_empty()
            || (self.lease.tokens > 0
                && now_ms.saturating_sub(self.lease_ms) >= self.lease_ttl_ms / 2)
    }

    /// What to publish now: the news, the unused lease given back, and the next lease wanted
    /// (twice the recent peak of reservations plus room for `min_useful` more, at most
    /// [`MAX_LEASE`]). Nothing changes until [`LocalBudget::published`] confirms the write.
    pub fn publication(&self, min_useful: u32) -> Publication {
        let mut delta = self.delta.clone();
        delta.refund(self.lease.epoch, self.lease.tokens);
        let want = self
            .reserved_peak
            .saturating_mul(2)
            .saturating_add(min_useful)
            .clamp(min_useful.min(MAX_LEASE), MAX_LEASE);
        Publication {
            delta,
            want,
            min_useful,
        }
    }

    /// The publication was written and `applied` is its answer: take the new lease.
    pub fn published(&mut self, applied: &Applied, min_useful: u32, now_ms: u64) {
        self.delta = Delta::default();
        self.lease = applied.lease;
        self.lease_ms = now_ms;
        self.generation = self.generation.wrapping_add(1);
        self.reserved_peak = self.reserved;
        if applied.lease.tokens < min_useful {
            self.empty_until_ms = now_ms.saturating_add(self.empty_backoff_ms);
        } else {
            self.empty_until_ms = 0;
        }
    }
}

/// Reads an attempt-count header value (`x-envoy-attempt-count: 3`,
/// `grpc-previous-rpc-attempts: 1`): ASCII digits only, at most 20, saturating. Anything else
/// (signs, spaces, fractions, non-UTF-8) is `None`: a hostile value is never a reason to trap or
/// to guess.
pub fn parse_attempts(v: &[u8]) -> Option<u64> {
    crate::deadline::parse_millis(v)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn policy(percent: f64, per_second: f64) -> BudgetPolicy {
        BudgetPolicy {
            budget_percent: percent,
            min_retries_per_second: per_second,
            window_ms: 10_000,
            buckets: 10,
            burst_cap_percent: None,
        }
    }

    /// A publication that only counts `n` requests.
    fn requests(n: u32) -> Publication {
        Publication {
            delta: Delta {
                requests: n,
                ..Delta::default()
            },
            ..Publication::default()
        }
    }

    /// Publishes `local` into `shared` at `now`, as the host's CAS would.
    fn publish(
        local: &mut LocalBudget,
        shared: &mut SharedBudget,
        p: &BudgetPolicy,
        min: u32,
        now: u64,
    ) -> Applied {
        let publication = local.publication(min);
        let applied = shared.apply(&publication, now, p);
        local.published(&applied, min, now);
        applied
    }

    /// Reserves `max` for one request, refilling from `shared` when needed.
    fn reserve(
        local: &mut LocalBudget,
        shared: &mut SharedBudget,
        p: &BudgetPolicy,
        max: u32,
        now: u64,
    ) -> Reservation {
        match local.reserve(max, now) {
            Reserve::Reserved(r) => r,
            Reserve::NeedRefill => {
                publish(local, shared, p, max, now);
                local.reserve_after_refill(max, now)
            }
        }
    }

    #[test]
    fn the_allowance_is_a_share_of_requests_plus_the_floor() {
        let p = policy(20.0, 10.0);
        assert_eq!(p.floor_tokens(), 100, "10 per second over 10 s");
        assert_eq!(p.allowance(0), 100);
        assert_eq!(p.allowance(500), 200);
        assert_eq!(p.allowance(7), 101, "20% of 7 is 1.4: rounded down");
        assert_eq!(
            policy(29.0, 0.0).allowance(100),
            29,
            "no binary-fraction off-by-one"
        );
        assert_eq!(policy(0.0, 0.5).allowance(1_000), 5);
        assert_eq!(
            policy(100.0, 0.0).allowance(u64::MAX),
            u64::MAX,
            "saturates"
        );
        assert_eq!(
            policy(f64::NAN, -1.0).allowance(10),
            0,
            "nonsense is no budget, not a trap"
        );
    }

    #[test]
    fn a_fresh_budget_grants_the_floor_and_nothing_more() {
        let p = policy(20.0, 2.0);
        let mut shared = SharedBudget::new(&p);
        let mut w = LocalBudget::new(&p, 100);
        let mut granted = 0;
        for _ in 0..30 {
            granted += reserve(&mut w, &mut shared, &p, 3, 1_000).tokens;
        }
        assert_eq!(granted, 20, "2 per second over 10 s, never more");
        assert_eq!(shared.available(1_000, &p), 0);
    }

    #[test]
    fn requests_published_raise_the_allowance() {
        let p = policy(20.0, 0.0);
        let mut shared = SharedBudget::new(&p);
        let mut w = LocalBudget::new(&p, 0);
        assert_eq!(
            reserve(&mut w, &mut shared, &p, 1, 0).tokens,
            0,
            "no requests, no floor"
        );
        for _ in 0..50 {
            w.record_request();
        }
        publish(&mut w, &mut shared, &p, 1, 10);
        assert_eq!(shared.totals(10).requests, 50);
        let mut granted = 0;
        for _ in 0..20 {
            granted += reserve(&mut w, &mut shared, &p, 1, 20).tokens;
        }
        assert_eq!(granted, 10, "20% of 50");
    }

    #[test]
    fn unused_reservations_come_back_and_used_ones_stay_charged() {
        let p = policy(0.0, 1.0);
        let mut shared = SharedBudget::new(&p);
        let mut w = LocalBudget::new(&p, 0);
        let a = reserve(&mut w, &mut shared, &p, 3, 0);
        let b = reserve(&mut w, &mut shared, &p, 3, 0);
        assert_eq!((a.tokens, b.tokens), (3, 3));
        w.settle(a, 0, 5);
        w.settle(b, 2, 5);
        publish(&mut w, &mut shared, &p, 3, 50);
        publish(&mut w, &mut shared, &p, 3, 60);
        // 10 tokens in all; the 2 retries made stay charged; the rest is leased or available.
        let t = shared.totals(60);
        assert_eq!(t.charged - u64::from(w.lease_tokens()), 2);
        assert_eq!(shared.available(60, &p) + u64::from(w.lease_tokens()), 8);
    }

    #[test]
    fn refunds_of_an_old_lease_return_to_its_own_bucket() {
        let p = policy(0.0, 1.0);
        let mut shared = SharedBudget::new(&p);
        let mut w = LocalBudget::new(&p, 0);
        let r = reserve(&mut w, &mut shared, &p, 3, 500); // bucket 0
        publish(&mut w, &mut shared, &p, 3, 2_500); // a new lease, in bucket 2
        w.settle(r, 1, 2_600); // refund 2 to bucket 0
        assert_eq!(w.delta().refunds(), &[(0, 2)]);
        publish(&mut w, &mut shared, &p, 3, 2_700);
        assert_eq!(
            shared.buckets[0].charged, 1,
            "the retry made stays where it was reserved"
        );
    }

    #[test]
    fn a_refund_for_a_bucket_that_left_the_window_is_dropped() {
        let p = policy(0.0, 1.0);
        let mut shared = SharedBudget::new(&p);
        let mut w = LocalBudget::new(&p, 0);
        let r = reserve(&mut w, &mut shared, &p, 3, 500);
        let later = 500 + 10_000;
        w.settle(r, 0, later);
        publish(&mut w, &mut shared, &p, 3, later);
        // The reservation was forgotten with its bucket; the refund must not lower a newer one.
        assert_eq!(
            shared.available(later, &p) + u64::from(w.lease_tokens()),
            10
        );
    }

    #[test]
    fn the_window_forgets_charges_and_requests_after_window() {
        let p = policy(50.0, 0.0);
        let mut shared = SharedBudget::new(&p);
        let mut w = LocalBudget::new(&p, 0);
        for _ in 0..10 {
            w.record_request();
        }
        publish(&mut w, &mut shared, &p, 1, 0);
        assert_eq!(shared.totals(9_999).requests, 10);
        assert_eq!(shared.totals(10_000).requests, 0, "bucket 0 is out at 10 s");
    }

    #[test]
    fn a_stale_lease_is_dropped_instead_of_spent_unbacked() {
        let p = policy(0.0, 1.0);
        let mut shared = SharedBudget::new(&p);
        let mut w = LocalBudget::new(&p, 0);
        publish(&mut w, &mut shared, &p, 3, 0);
        assert_eq!(w.lease_tokens(), 3);
        // 9 s later the lease's bucket is about to leave the window: refill instead of using it.
        assert_eq!(w.reserve(1, 9_000), Reserve::NeedRefill);
        assert_eq!(w.lease_tokens(), 0);
    }

    #[test]
    fn after_finding_the_budget_empty_a_worker_waits_before_asking_again() {
        let p = policy(0.0, 0.1); // 1 token per 10 s
        let mut shared = SharedBudget::new(&p);
        let mut w = LocalBudget::new(&p, 100);
        assert_eq!(
            reserve(&mut w, &mut shared, &p, 3, 0).tokens,
            1,
            "a partial grant"
        );
        assert_eq!(
            w.reserve(3, 50),
            Reserve::Reserved(Reservation {
                tokens: 0,
                generation: 1,
                epoch: 0,
                backed: true,
            })
        );
        assert_eq!(w.reserve(3, 100), Reserve::NeedRefill, "backoff over");
    }

    #[test]
    fn retries_made_under_an_unbacked_permission_are_charged_in_full() {
        let p = policy(0.0, 1.0);
        let mut w = LocalBudget::new(&p, 0);
        w.settle(Reservation::unbacked(3), 2, 0);
        assert_eq!(w.delta().extra, 2);
        assert_eq!(w.reserved(), 0);
    }

    #[test]
    fn two_workers_share_one_budget() {
        let p = policy(0.0, 2.0);
        let mut shared = SharedBudget::new(&p);
        let mut a = LocalBudget::new(&p, 100);
        let mut b = LocalBudget::new(&p, 100);
        let mut total = 0;
        for i in 0..40 {
            let now = 100 + i * 10;
            let w = if i % 2 == 0 { &mut a } else { &mut b };
            let r = reserve(w, &mut shared, &p, 3, now);
            w.settle(r, r.tokens, now);
            total += r.tokens;
            if i % 7 == 0 {
                publish(&mut a, &mut shared, &p, 3, now);
                publish(&mut b, &mut shared, &p, 3, now);
            }
        }
        assert_eq!(total, 20, "one floor of 20 for both workers, not 20 each");
    }

    #[test]
    fn when_scarce_a_worker_gets_what_one_request_needs_or_half_of_the_rest() {
        assert_eq!(grant_size(100, 10, 3), 10);
        assert_eq!(grant_size(8, 10, 3), 4);
        assert_eq!(grant_size(4, 10, 3), 3);
        assert_eq!(grant_size(2, 10, 3), 2);
        assert_eq!(grant_size(0, 10, 3), 0);
        assert_eq!(grant_size(u64::MAX, u32::MAX, 3), MAX_LEASE);
    }

    #[test]
    fn gauge_deltas_add_up_to_the_last_published_level() {
        let p = policy(20.0, 1.0);
        let mut shared = SharedBudget::new(&p);
        let mut a = LocalBudget::new(&p, 0);
        let mut b = LocalBudget::new(&p, 0);
        let mut gauge = 0i64;
        for i in 0..30u64 {
            let w = if i % 3 == 0 { &mut a } else { &mut b };
            w.record_request();
            let r = match w.reserve(2, i * 100) {
                Reserve::Reserved(r) => r,
                Reserve::NeedRefill => {
                    gauge += publish(w, &mut shared, &p, 2, i * 100).gauge_delta;
                    w.reserve_after_refill(2, i * 100)
                }
            };
            w.settle(r, (i % 3) as u32, i * 100);
            gauge += publish(w, &mut shared, &p, 2, i * 100).gauge_delta;
        }
        assert_eq!(gauge, i64::try_from(shared.published_level()).unwrap());
    }

    #[test]
    fn state_round_trips_through_the_codec() {
        let p = policy(20.0, 1.0);
        let mut shared = SharedBudget::new(&p);
        let mut w = LocalBudget::new(&p, 0);
        for _ in 0..7 {
            w.record_request();
        }
        let _ = reserve(&mut w, &mut shared, &p, 3, 1_234);
        let bytes = shared.encode();
        assert_eq!(SharedBudget::decode(&bytes, &p), Ok(shared.clone()));
        assert_eq!(bytes.len(), 2 + 8 + 4 + 8 + 8 + 10 * 16);
    }

    #[test]
    fn a_changed_window_starts_empty_but_keeps_the_gauge_level() {
        let p = policy(20.0, 1.0);
        let mut shared = SharedBudget::new(&p);
        let mut w = LocalBudget::new(&p, 0);
        let applied = publish(&mut w, &mut shared, &p, 3, 1_000);
        let other = BudgetPolicy {
            window_ms: 5_000,
            ..p
        };
        let decoded = SharedBudget::decode(&shared.encode(), &other).unwrap();
        assert_eq!(decoded.totals(1_000), Totals::default());
        assert_eq!(decoded.published_level(), applied.level);
        assert_eq!(decoded.width_ms(), 500);
    }

    #[test]
    fn garbage_never_decodes_and_never_panics() {
        let p = policy(20.0, 1.0);
        assert_eq!(SharedBudget::decode(&[], &p), Err(DecodeError::Empty));
        assert_eq!(
            SharedBudget::decode(&[0xCB, 1], &p),
            Err(DecodeError::WrongKind { found: 0xCB })
        );
        let mut bytes = SharedBudget::new(&p).encode();
        bytes.pop();
        assert_eq!(
            SharedBudget::decode(&bytes, &p),
            Err(DecodeError::Truncated)
        );
        let mut e = Encoder::new(KIND, VERSION);
        e.u64(1000).u32(0).u64(0).u64(0);
        assert_eq!(
            SharedBudget::decode(&e.finish(), &p),
            Err(DecodeError::Invalid)
        );
        // A bucket stored in the wrong slot.
        let mut e = Encoder::new(KIND, VERSION);
        e.u64(1000).u32(2).u64(5).u64(0);
        e.u64(1).u32(1).u32(0).u64(0).u32(0).u32(0);
        assert_eq!(
            SharedBudget::decode(&e.finish(), &p),
            Err(DecodeError::Invalid)
        );
    }

    #[test]
    fn attempt_headers_are_read_strictly() {
        assert_eq!(parse_attempts(b"1"), Some(1));
        assert_eq!(parse_attempts(b"4"), Some(4));
        assert_eq!(parse_attempts(b"99999999999999999999"), Some(u64::MAX));
        for hostile in [
            &b"-1"[..],
            b"",
            b" 2",
            b"2.0",
            b"1e3",
            b"two",
            b"\xff\xfe",
            b"123456789012345678901",
        ] {
            assert_eq!(parse_attempts(hostile), None, "{hostile:?}");
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            /// A worker sees a request that may retry up to `max` and ends up making `used`.
            Request {
                worker: usize,
                max: u32,
                used: u32,
                ends_later: bool,
            },
            /// A worker's tick.
            Publish { worker: usize },
            /// Every request still in flight ends.
            Drain,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                6 => (0usize..4, 0u32..5, 0u32..6, any::<bool>()).prop_map(|(worker, max, used, ends_later)| Op::Request { worker, max, used, ends_later }),
                2 => (0usize..4).prop_map(|worker| Op::Publish { worker }),
                1 => Just(Op::Drain),
            ]
        }

        proptest! {
            /// Within one window, retries made never exceed the allowance of the requests seen,
            /// however requests, ticks and refills interleave across workers.
            #[test]
            fn retries_made_never_exceed_the_allowance(
                percent in 0.0f64..100.0,
                per_second in 0.0f64..5.0,
                ops in proptest::collection::vec(op(), 1..300),
            ) {
                let p = policy(percent, per_second);
                let mut shared = SharedBudget::new(&p);
                let mut workers: Vec<LocalBudget> = (0..4).map(|_| LocalBudget::new(&p, 50)).collect();
                let mut in_flight: Vec<(usize, Reservation, u32)> = Vec::new();
                let mut made = 0u64;
                let mut requests = 0u64;
                for (i, op) in ops.into_iter().enumerate() {
                    let now = 1_000 + i as u64 * 7; // stays well inside one window
                    match op {
                        Op::Request { worker, max, used, ends_later } => {
                            let w = &mut workers[worker];
                            w.record_request();
                            requests += 1;
                            let r = reserve(w, &mut shared, &p, max, now);
                            prop_assert!(r.tokens <= max);
                            // The router never makes more retries than it was allowed.
                            let used = used.min(r.tokens);
                            made += u64::from(used);
                            if ends_later {
                                in_flight.push((worker, r, used));
                            } else {
                                w.settle(r, used, now);
                            }
                        }
                        Op::Publish { worker } => {
                            let w = &mut workers[worker];
                            publish(w, &mut shared, &p, 3, now);
                        }
                        Op::Drain => {
                            for (worker, r, used) in in_flight.drain(..) {
                                workers[worker].settle(r, used, now);
                            }
                        }
                    }
                    prop_assert!(made <= p.allowance(requests), "made {made} > allowance of {requests}");
                }
                // Once everything ended and was published, the window holds exactly the retries
                // made plus the leases workers hold.
                let now = 1_000 + 300 * 7;
                for (worker, r, used) in in_flight.drain(..) {
                    workers[worker].settle(r, used, now);
                }
                for w in &mut workers {
                    publish(w, &mut shared, &p, 3, now);
                }
                let leased: u64 = workers.iter().map(|w| u64::from(w.lease_tokens())).sum();
                prop_assert_eq!(shared.totals(now).charged, made + leased);
                prop_assert_eq!(shared.totals(now).requests, requests);
            }

            #[test]
            fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = SharedBudget::decode(&bytes, &BudgetPolicy::default());
                let mut tagged = vec![KIND, VERSION];
                tagged.extend_from_slice(&bytes);
                let _ = SharedBudget::decode(&tagged, &BudgetPolicy::default());
            }

            #[test]
            fn the_allowance_grows_with_requests(percent in 0.0f64..=100.0, per_second in 0.0f64..100.0, a in 0u64..1_000_000, b in 0u64..1_000_000) {
                let p = policy(percent, per_second);
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                prop_assert!(p.allowance(lo) <= p.allowance(hi));
                prop_assert!(p.allowance(lo) >= p.floor_tokens());
            }
        }
    }

    #[test]
    fn with_a_burst_cap_a_window_of_saved_budget_is_spent_at_most_at_the_cap_per_bucket_width() {
        // 20% of 1000 requests saved over a quiet window: 200 tokens. Without a cap they can all
        // go at once; with a cap of 120%, one bucket (a tenth) spends at most 24.
        let mut p = policy(20.0, 0.0);
        let mut shared = SharedBudget::new(&p);
        for i in 0..10u64 {
            shared.apply(&requests(100), i * 1_000, &p);
        }
        assert_eq!(shared.available(9_500, &p), 200);
        p.burst_cap_percent = Some(120.0);
        assert_eq!(shared.available(9_500, &p), 24);
        let want = Publication {
            want: 1_000,
            min_useful: 1,
            ..Publication::default()
        };
        // Scarce leases are split (half of what is left each time): together they are the cap.
        let granted: u32 = (0..20)
            .map(|_| shared.apply(&want, 9_500, &p).lease.tokens)
            .sum();
        assert_eq!(granted, 24);
        assert_eq!(
            shared.available(9_900, &p),
            0,
            "the bucket's share is spent"
        );
        // A bucket-width later the spend is free again, gradually: just after the bucket ends
        // most of it still counts, half-way through the next one half of it does.
        assert_eq!(shared.available(10_100, &p), 0);
        assert!(shared.available(10_500, &p) >= 8);
    }

    #[test]
    fn a_burst_cap_rounds_down_so_a_width_never_spends_more_than_its_percent() {
        // 20% of 475 requests and a floor of 1 a second: 105 tokens, 10.5 a width; 110% of that
        // is 11.55, so a width may spend 11, not 12. A tiny budget still gets one a width.
        let mut p = policy(20.0, 1.0);
        p.burst_cap_percent = Some(110.0);
        let mut shared = SharedBudget::new(&p);
        shared.apply(&requests(475), 0, &p);
        assert_eq!(shared.available(500, &p), 11);
        let mut tiny = policy(1.0, 0.0);
        tiny.burst_cap_percent = Some(100.0);
        let mut small = SharedBudget::new(&tiny);
        small.apply(&requests(100), 0, &tiny);
        assert_eq!(small.available(500, &tiny), 1);
    }
}
