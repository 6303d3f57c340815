//! The preheat machine on a virtual clock: assignment per site, joining, time-outs, departures,
//! failures and the bounds.

use super::*;

fn request(image: &str, sites: &[&str]) -> Request {
    let sites: Vec<String> = sites.iter().map(|s| (*s).to_owned()).collect();
    Request::parse(image, &[], &sites).unwrap()
}

/// A machine with workers `(host, site)`.
fn machine(workers: &[(&str, &str)]) -> Preheats {
    let mut p = Preheats::new(Config::default());
    for (h, s) in workers {
        p.worker_joined(0, h, s);
    }
    p
}

/// The hosts told to start `job`, in order.
fn starts(commands: &[Command], job: JobId) -> Vec<String> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Start { host, job: j, .. } if *j == job => Some(host.clone()),
            _ => None,
        })
        .collect()
}

fn site<'a>(view: &'a JobView, name: &str) -> &'a SiteView {
    view.sites.iter().find(|s| s.site == name).unwrap()
}

fn progress(done: u32, total: u32, fetched: u64) -> Progress {
    Progress { blobs_done: done, blobs_total: total, bytes_done: 0, bytes_total: 0, bytes_fetched: fetched }
}

#[test]
fn one_worker_per_site_and_done_when_every_site_is() {
    let mut p = machine(&[("a1", "east"), ("a2", "east"), ("b1", "west")]);
    let (id, joined) = p.submit(10, request("app:v1", &[])).unwrap();
    assert!(!joined);
    let cmds = p.take_commands();
    assert_eq!(starts(&cmds, id), ["a1", "b1"], "one per site, the least busy (then by id)");
    assert_eq!(p.job(id).unwrap().state, State::Running);
    p.progress(20, "a1", id, progress(1, 3, 100));
    assert_eq!(site(&p.job(id).unwrap(), "east").progress.blobs_done, 1);
    p.done(30, "a1", id, progress(3, 3, 300));
    assert_eq!(p.job(id).unwrap().state, State::Running);
    p.done(40, "b1", id, progress(3, 3, 0));
    let view = p.job(id).unwrap();
    assert_eq!(view.state, State::Done);
    assert_eq!(site(&view, "west").progress.bytes_fetched, 0);
    assert_eq!(p.running(), 0);
}

#[test]
fn the_least_busy_worker_of_a_site_gets_the_next_job() {
    let mut p = machine(&[("a1", "east"), ("a2", "east")]);
    let (first, _) = p.submit(0, request("app:v1", &[])).unwrap();
    let (second, _) = p.submit(0, request("app:v2", &[])).unwrap();
    let cmds = p.take_commands();
    assert_eq!((starts(&cmds, first), starts(&cmds, second)), (vec!["a1".into()], vec!["a2".to_owned()]));
}

#[test]
fn an_equal_request_joins_the_running_job_and_a_finished_one_runs_again() {
    let mut p = machine(&[("a1", "east")]);
    let (id, _) = p.submit(0, request("app:v1", &[])).unwrap();
    assert_eq!(p.submit(5, request("app:v1", &[])).unwrap(), (id, true));
    assert_eq!(starts(&p.take_commands(), id).len(), 1, "joined, not started twice");
    let (other, joined) = p.submit(5, request("app:v1", &["east"])).unwrap();
    assert!(other != id && !joined, "other sites named: another request");
    p.done(10, "a1", id, progress(2, 2, 0));
    let (again, joined) = p.submit(20, request("app:v1", &[])).unwrap();
    assert!(again != id && !joined, "a finished job is run again (the tag may have moved)");
}

#[test]
fn a_dead_workers_part_goes_to_another_worker_of_its_site() {
    let mut p = machine(&[("a1", "east"), ("a2", "east")]);
    let (id, _) = p.submit(0, request("app:v1", &[])).unwrap();
    assert_eq!(starts(&p.take_commands(), id), ["a1"]);
    p.worker_left(100, "a1");
    assert_eq!(starts(&p.take_commands(), id), ["a2"]);
    assert_eq!(site(&p.job(id).unwrap(), "east").host.as_deref(), Some("a2"));
    // A late report from the dead worker changes nothing.
    p.done(150, "a1", id, progress(1, 1, 0));
    assert_eq!(p.job(id).unwrap().state, State::Running);
    p.done(200, "a2", id, progress(1, 1, 0));
    assert_eq!(p.job(id).unwrap().state, State::Done);
}

#[test]
fn a_lone_worker_that_comes_back_gets_its_part_again() {
    let mut p = machine(&[("a1", "east")]);
    let (id, _) = p.submit(0, request("app:v1", &[])).unwrap();
    p.take_commands();
    p.worker_left(100, "a1");
    p.tick(5_000);
    assert_eq!(p.job(id).unwrap().state, State::Waiting);
    p.worker_joined(6_000, "a1", "east");
    assert_eq!(starts(&p.take_commands(), id), ["a1"]);
}

#[test]
fn a_worker_whose_stream_reopens_is_told_to_start_its_parts_again() {
    let mut p = machine(&[("a1", "east"), ("a2", "east")]);
    let (id, _) = p.submit(0, request("app:v1", &[])).unwrap();
    assert_eq!(starts(&p.take_commands(), id), ["a1"]);
    p.worker_joined(500, "a1", "east");
    assert_eq!(starts(&p.take_commands(), id), ["a1"], "the same worker, started again");
    p.done(600, "a1", id, progress(1, 1, 0));
    assert_eq!(p.job(id).unwrap().state, State::Done);
}

#[test]
fn a_silent_worker_is_cancelled_and_replaced() {
    let c = Config::default();
    let mut p = machine(&[("a1", "east"), ("a2", "east")]);
    let (id, _) = p.submit(0, request("app:v1", &[])).unwrap();
    p.take_commands();
    p.progress(10_000, "a1", id, progress(0, 4, 0));
    p.tick(10_000 + c.progress_timeout_ms - 1);
    assert!(p.take_commands().is_empty(), "heard from in time");
    p.tick(10_000 + c.progress_timeout_ms);
    let cmds = p.take_commands();
    assert!(cmds.contains(&Command::Cancel { host: "a1".into(), job: id }), "{cmds:?}");
    assert_eq!(starts(&cmds, id), ["a2"]);
}

#[test]
fn failures_are_retried_elsewhere_up_to_the_bound_and_permanent_ones_are_not() {
    let mut p = machine(&[("a1", "east"), ("a2", "east"), ("a3", "east"), ("a4", "east")]);
    let (id, _) = p.submit(0, request("app:v1", &[])).unwrap();
    for (t, host) in [(1, "a1"), (2, "a2")] {
        assert_eq!(starts(&p.take_commands(), id), [host]);
        p.failed(t, host, id, "disk full", false);
    }
    assert_eq!(starts(&p.take_commands(), id), ["a3"]);
    p.failed(3, "a3", id, "disk full", false);
    assert!(starts(&p.take_commands(), id).is_empty(), "max_attempts = 3");
    let view = p.job(id).unwrap();
    assert_eq!(view.state, State::Failed);
    assert!(site(&view, "east").error.as_deref().unwrap().contains("a3: disk full"), "{view:?}");

    let (id, _) = p.submit(10, request("app:v2", &[])).unwrap();
    let host = starts(&p.take_commands(), id).remove(0);
    p.failed(11, &host, id, "manifest unknown", true);
    assert!(p.take_commands().is_empty());
    assert_eq!(p.job(id).unwrap().state, State::Failed);
}

#[test]
fn a_named_site_without_workers_fails_after_the_wait_and_the_others_go_on() {
    let c = Config::default();
    let mut p = machine(&[("a1", "east")]);
    let (id, _) = p.submit(0, request("app:v1", &["east", "mars"])).unwrap();
    assert_eq!(starts(&p.take_commands(), id), ["a1"]);
    p.tick(c.wait_for_host_ms - 1);
    assert_eq!(site(&p.job(id).unwrap(), "mars").state, State::Waiting);
    p.progress(c.wait_for_host_ms - 1, "a1", id, progress(0, 1, 0));
    p.tick(c.wait_for_host_ms);
    p.done(c.wait_for_host_ms + 1, "a1", id, progress(1, 1, 10));
    let view = p.job(id).unwrap();
    assert_eq!(
        (view.state, site(&view, "east").state, site(&view, "mars").state),
        (State::Failed, State::Done, State::Failed)
    );
    assert!(site(&view, "mars").error.as_deref().unwrap().contains("no live host"), "{view:?}");
}

#[test]
fn a_worker_joining_a_waiting_site_takes_its_part() {
    let mut p = machine(&[("a1", "east")]);
    let (id, _) = p.submit(0, request("app:v1", &["west"])).unwrap();
    assert!(p.take_commands().is_empty());
    p.worker_joined(1_000, "b1", "west");
    assert_eq!(starts(&p.take_commands(), id), ["b1"]);
}

#[test]
fn nothing_to_run_on_and_too_many_jobs_are_refused() {
    let mut p = Preheats::new(Config { max_jobs: 2, ..Config::default() });
    assert_eq!(p.submit(0, request("app:v1", &[])), Err(SubmitError::NoHosts));
    p.worker_joined(0, "a1", "east");
    p.submit(0, request("app:v1", &[])).unwrap();
    p.submit(0, request("app:v2", &[])).unwrap();
    assert_eq!(p.submit(0, request("app:v3", &[])), Err(SubmitError::TooMany(2)));
    assert!(p.submit(0, request("app:v2", &[])).unwrap().1, "joining is not a new job");
}

#[test]
fn the_job_timeout_fails_a_running_part_and_cancels_it() {
    let c = Config { progress_timeout_ms: u64::MAX, ..Config::default() };
    let mut p = Preheats::new(c.clone());
    p.worker_joined(0, "a1", "east");
    let (id, _) = p.submit(0, request("app:v1", &[])).unwrap();
    p.take_commands();
    p.progress(c.job_timeout_ms - 1, "a1", id, progress(0, 1, 0));
    p.tick(c.job_timeout_ms);
    assert_eq!(p.take_commands(), [Command::Cancel { host: "a1".into(), job: id }]);
    assert_eq!(p.job(id).unwrap().state, State::Failed);
}

#[test]
fn finished_jobs_are_forgotten_by_age_and_by_count() {
    let c = Config { keep_finished: 2, ..Config::default() };
    let mut p = Preheats::new(c.clone());
    p.worker_joined(0, "a1", "east");
    let mut ids = Vec::new();
    for (t, tag) in ["v1", "v2", "v3"].iter().enumerate() {
        let (id, _) = p.submit(t as u64, request(&format!("app:{tag}"), &[])).unwrap();
        p.done(t as u64, "a1", id, progress(1, 1, 0));
        ids.push(id);
    }
    p.tick(10);
    assert!(p.job(ids[0]).is_none() && p.job(ids[1]).is_some() && p.job(ids[2]).is_some());
    p.tick(10 + c.keep_finished_ms);
    assert!(p.job(ids[2]).is_none());
}
