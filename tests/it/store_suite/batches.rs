//! The store suite's batch tests: open batch jobs chosen by room, held until taken (once), a
//! creation's hold lapsing with its lease, results files capped per project; and a client's
//! budget reserved and moved on its own (a batch job's), on every store.

use super::*;
use gemini_quota_proxy::quota::batch::{BatchCandidate, BatchJob, BatchReserve};
use gemini_quota_proxy::quota::client::ClientCaps;
use gemini_quota_proxy::quota::{ClientAdmit, ClientLimit, ClientPeriod};

fn job(tokens: u64) -> BatchJob {
    BatchJob {
        project: String::new(),
        kid: String::new(),
        model: "gemini-2.5-flash".into(),
        tokens,
        until_ms: None,
        client: Some("team".into()),
        owner: None,
        budget: None,
    }
}

fn batch_req(tokens: u64) -> BatchReserve {
    BatchReserve {
        job: job(tokens),
        candidates: ["p1", "p2"]
            .iter()
            .map(|p| BatchCandidate {
                project: (*p).into(),
                kid: format!("kid-{p}"),
            })
            .collect(),
        concurrent: 2,
        enqueued_tokens: 100,
        lease_ms: 10_000,
    }
}

/// Reserve and open `name`: the project it went to.
async fn open(h: &Harness, tokens: u64, name: &str) -> Option<String> {
    let r = batch_req(tokens);
    let (i, hold) = h.store.batch_reserve(&r).await.unwrap()?;
    let c = &r.candidates[i];
    let j = BatchJob {
        project: c.project.clone(),
        kid: c.kid.clone(),
        owner: Some("team".into()),
        ..r.job
    };
    h.store.batch_open(&hold, name, &j).await.unwrap();
    Some(c.project.clone())
}

both!(
    batch_jobs_go_where_the_most_room_is_and_hold_it_until_taken_once,
    |h: Harness| async move {
        assert_eq!(open(&h, 60, "batches/a").await.as_deref(), Some("p1"));
        assert_eq!(open(&h, 50, "batches/b").await.as_deref(), Some("p2"));
        // 60 fits nowhere now (40 and 50 left).
        assert!(
            h.store
                .batch_reserve(&batch_req(60))
                .await
                .unwrap()
                .is_none()
        );
        // A hold counts until its lease ends, then frees its room by itself.
        let (i, _hold) = h
            .store
            .batch_reserve(&batch_req(45))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(i, 1, "p1 has 40 left, p2 50");
        let (i, _hold) = h.store.batch_reserve(&batch_req(1)).await.unwrap().unwrap();
        assert_eq!(i, 0, "p2 holds its two jobs at once");
        assert!(
            h.store
                .batch_reserve(&batch_req(1))
                .await
                .unwrap()
                .is_none()
        );
        h.clock.advance(10_001);
        let (i, _) = h
            .store
            .batch_reserve(&batch_req(40))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(i, 1, "the holds lapsed: p2 has 50 left again");
        let entries = h.store.batch_entries().await.unwrap();
        let a = entries.iter().find(|(f, _)| f == "batches/a").unwrap();
        assert_eq!((a.1.project.as_str(), a.1.tokens), ("p1", 60));
        assert_eq!(a.1.kid, "kid-p1");
        assert_eq!(a.1.owner.as_deref(), Some("team"));
        assert_eq!(a.1.until_ms, None);
        // Taken once.
        assert!(h.store.batch_take("batches/a").await.unwrap().is_some());
        assert!(h.store.batch_take("batches/a").await.unwrap().is_none());
        // Results files: at most `cap` per project, the oldest go first.
        for (n, f) in ["files/r1", "files/r2", "files/r3"].iter().enumerate() {
            let mut j = job(n as u64);
            j.project = "p1".into();
            h.store.batch_results(f, &j, 2).await.unwrap();
            h.clock.advance(1);
        }
        let files: Vec<String> = h
            .store
            .batch_entries()
            .await
            .unwrap()
            .into_iter()
            .map(|(f, _)| f)
            .filter(|f| f.starts_with("file:"))
            .collect();
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(!files.contains(&"file:files/r1".to_string()), "{files:?}");
        // One entry read alone: kept, gone once pushed out, and gone once taken.
        let r3 = h.store.batch_entry("file:files/r3").await.unwrap().unwrap();
        assert_eq!((r3.project.as_str(), r3.tokens), ("p1", 2));
        assert!(
            h.store
                .batch_entry("file:files/r1")
                .await
                .unwrap()
                .is_none()
        );
        assert!(h.store.batch_take("file:files/r3").await.unwrap().is_some());
        assert!(
            h.store
                .batch_entry("file:files/r3")
                .await
                .unwrap()
                .is_none()
        );
        // A results file is kept [`RESULTS_TTL_MS`]: lapsed, it is not found.
        assert!(
            h.store
                .batch_entry("file:files/r2")
                .await
                .unwrap()
                .is_some()
        );
        h.clock.advance(3 * 24 * 3_600_000 + 1);
        assert!(
            h.store
                .batch_entry("file:files/r2")
                .await
                .unwrap()
                .is_none()
        );
    }
);

both!(
    a_batch_budget_reservation_fits_the_budget_or_is_refused_and_is_moved_later,
    |h: Harness| async move {
        let period = ClientPeriod::at(Los_Angeles, h.clock.now_ms());
        let c = |cost: u64| ClientAdmit {
            name: "team".into(),
            caps: ClientCaps {
                daily_micros: Some(1_000),
                // Other limits are not looked at by a budget reservation.
                rpm: Some(1),
                ..ClientCaps::default()
            },
            period,
            cost_micros: cost,
            lease_ms: 1_000,
        };
        let spent = || async {
            h.store
                .client_spend(&[("team".into(), period.day, period.month)])
                .await
                .unwrap()[0]
        };
        assert_eq!(h.store.client_budget_reserve(&c(600)).await.unwrap(), None);
        assert_eq!(h.store.client_budget_reserve(&c(300)).await.unwrap(), None);
        assert_eq!(spent().await, (900, 900));
        let refused = h.store.client_budget_reserve(&c(200)).await.unwrap();
        assert_eq!(
            refused.map(|r| (r.0, r.1)),
            Some((ClientLimit::DailyBudget, 1_000))
        );
        assert_eq!(spent().await, (900, 900), "a refusal writes nothing");
        // Results cost 500 less than reserved: room again.
        h.store
            .client_budget_adjust("team", period.day, period.month, -500)
            .await
            .unwrap();
        assert_eq!(spent().await, (400, 400));
        assert_eq!(h.store.client_budget_reserve(&c(200)).await.unwrap(), None);
    }
);
