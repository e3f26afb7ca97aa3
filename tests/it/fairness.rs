//! Weighted fair share between tiers, and priority then FIFO within a tier.

use std::collections::HashMap;

use conveyor::proto::{self, Tier};

use crate::harness::{self, Worker, submit, submit_job};

#[tokio::test]
async fn tiers_share_the_workers_by_weight() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let tiers = [Tier::Free, Tier::Pro, Tier::Premium, Tier::Enterprise];
    for tier in tiers {
        for i in 0..60 {
            let req = proto::SubmitJobRequest {
                tier: tier as i32,
                ..submit("render", &i.to_string())
            };
            submit_job(&mut jobs, req).await;
        }
    }
    // One slot, so every lease is a choice between all four backlogs.
    let mut worker = Worker::connect(&server, &["render"], 1).await;
    let mut taken: HashMap<i32, u32> = HashMap::new();
    for _ in 0..75 {
        let a = worker.assignment().await;
        let job = a.job.unwrap();
        *taken.entry(job.tier).or_default() += 1;
        assert_eq!(worker.complete(&job.id, a.token, "ok").await.code, 0);
    }
    let count = |t: Tier| taken.get(&(t as i32)).copied().unwrap_or(0);
    // 75 leases at 8:4:2:1 is 40:20:10:5; allow a job either way for rounding at the edges.
    for (tier, expected) in [
        (Tier::Enterprise, 40),
        (Tier::Premium, 20),
        (Tier::Pro, 10),
        (Tier::Free, 5),
    ] {
        let got = count(tier);
        assert!(
            got.abs_diff(expected) <= 1,
            "{tier:?}: {got} of 75, expected about {expected}: {taken:?}"
        );
    }
}

#[tokio::test]
async fn within_a_tier_lower_priority_numbers_go_first_then_submission_order() {
    let (_redis, server) = harness::start().await;
    let mut jobs = server.jobs().await;
    let mut expected = Vec::new();
    let mut submitted = Vec::new();
    for (i, priority) in [5, 9, 1, 5, 1, 3].into_iter().enumerate() {
        let req = proto::SubmitJobRequest {
            priority: Some(priority),
            ..submit("edit", &i.to_string())
        };
        submitted.push((priority, i, submit_job(&mut jobs, req).await.id));
    }
    submitted.sort();
    expected.extend(submitted.into_iter().map(|(_, _, id)| id));
    let mut worker = Worker::connect(&server, &["edit"], 1).await;
    let mut order = Vec::new();
    for _ in 0..expected.len() {
        let a = worker.assignment().await;
        let id = a.job.unwrap().id;
        assert_eq!(worker.complete(&id, a.token, "ok").await.code, 0);
        order.push(id);
    }
    assert_eq!(order, expected);
}
