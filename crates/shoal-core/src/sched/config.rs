//! Scheduler configuration: budgets, caps and timeouts, with the defaults in one place.
//!
//! Values only; loading them from a file is the binary's job.

/// Tuning of the [`Scheduler`](super::Scheduler). `Default` gives the values below.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// A host that has neither announced itself nor reported anything for this long (ms) is
    /// removed by [`expire`](super::Scheduler::expire), and its peers leave every task.
    /// Default 90 000 (90 s). Shorter: dead hosts stop being offered sooner, but daemons must
    /// announce more often.
    pub host_ttl_ms: u64,
    /// Parents offered per decision, best first. Default 4. More: more sources per child, more
    /// children per parent counted against [`max_children_per_parent`](Self::max_children_per_parent).
    pub candidate_parents: usize,
    /// Per task and site, how many peers fetch from the origin at once. Default 1: one origin
    /// copy per site. A slot is freed when its peer is done, failed, left or expired.
    pub back_to_source_per_site: u32,
    /// A parent whose children in this task (as assigned by this scheduler) or announced active
    /// uploads reach this number is not offered for the task. Default 8.
    pub max_children_per_parent: u32,
    /// Parents a peer is linked to at most when others are offered back to it (see
    /// [`Offer`](super::Offer)); its own decisions still give it `candidate_parents`. Default 8;
    /// 0 turns offers off. More: a denser mesh (more "have" streams per peer).
    pub max_parents: usize,
    /// A peer that asks [`reschedule`](super::Scheduler::reschedule) this many times without
    /// finishing a piece in between is sent back to source, even beyond the site's budget, so
    /// a pull never hangs. Default 2 (0: every reschedule goes back to source).
    pub reschedule_b2s_after: u32,
    /// Failures of one parent reported by one peer (any reason) after which the parent is bad
    /// for that peer and task. Default 3. A digest mismatch marks it bad at once.
    pub bad_after_failures: u32,
    /// A parent that this many distinct peers of a task reported for a digest mismatch is not
    /// offered to any peer of that task any more (it still downloads). Default 3; 0 never
    /// quarantines. Lower: corrupt parents waste fewer pieces; one or two malicious children can
    /// then shut an honest parent out of a task.
    pub quarantine_after_reports: u32,
    /// Largest piece count a task may have; larger layouts are refused at register (a bitmap
    /// per peer is kept in memory). Default 1 048 576 (a 16 TiB blob at 16 MiB pieces).
    pub max_pieces: u32,
}

impl Config {
    /// Whether a parent reported for digest mismatches by `reports` distinct peers is
    /// quarantined.
    pub(super) fn quarantined(&self, reports: u32) -> bool {
        self.quarantine_after_reports > 0 && reports >= self.quarantine_after_reports
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host_ttl_ms: 90_000,
            candidate_parents: 4,
            back_to_source_per_site: 1,
            max_children_per_parent: 8,
            max_parents: 8,
            reschedule_b2s_after: 2,
            bad_after_failures: 3,
            quarantine_after_reports: 3,
            max_pieces: 1 << 20,
        }
    }
}
