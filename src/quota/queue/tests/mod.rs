//! The queue alone: lines, turns, predictions and bounds, in (sometimes paused) time.

use super::*;

mod fair;

const M: QuotaFamily = QuotaFamily::Generate;

const CLAIM: Claim = Claim {
    client: 1,
    weight: 1,
    bytes: 100,
};

fn limits(max_length: usize) -> QueueLimits {
    QueueLimits {
        max_length,
        max_waiters_total: 10_000,
        max_waiting_bytes: 1 << 30,
        max_client_share: 1.0,
    }
}

fn lane(model: &str) -> Lane<'_> {
    Lane {
        model,
        family: M,
        project: None,
    }
}

/// A queue that outlives the test's spawned tasks.
fn leaked(max: usize) -> &'static Queues {
    Box::leak(Box::new(Queues::new(limits(max))))
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

#[tokio::test]
async fn the_first_to_join_is_the_head_and_the_next_moves_up_when_it_leaves() {
    let q = leaked(10);
    assert!(!q.busy(lane("m")));
    let a = q.join(lane("m"), far(), CLAIM, None).unwrap();
    let b = q.join(lane("m"), far(), CLAIM, None).unwrap();
    assert!(a.is_head() && !b.is_head());
    assert!(q.busy(lane("m")));
    assert!(!q.busy(lane("other")));
    assert!(!q.busy(Lane {
        model: "m",
        family: QuotaFamily::Embed,
        project: None,
    }));
    assert!(matches!(a.turn().await, Turn::Head));
    let waiting = tokio::spawn(async move { matches!(b.turn().await, Turn::Head) });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    drop(a);
    assert!(waiting.await.unwrap(), "b reached the front once a left");
    assert!(!q.busy(lane("m")), "an empty line is removed");
    assert_eq!(q.waiting(), 0);
    assert!(q.lines().is_empty());
}

#[tokio::test]
async fn a_waiter_that_leaves_from_the_middle_keeps_the_order_of_the_rest() {
    let q = Queues::new(limits(10));
    let a = q.join(lane("m"), far(), CLAIM, None).unwrap();
    let b = q.join(lane("m"), far(), CLAIM, None).unwrap();
    let c = q.join(lane("m"), far(), CLAIM, None).unwrap();
    drop(b);
    assert_eq!(q.lines()[0].length, 2);
    drop(a);
    assert!(matches!(c.turn().await, Turn::Head));
}

#[tokio::test]
async fn a_full_line_refuses_with_the_last_refusal_it_saw() {
    let q = Queues::new(limits(2));
    let a = q.join(lane("m"), far(), CLAIM, None).unwrap();
    let _b = q.join(lane("m"), far(), CLAIM, None).unwrap();
    let r = Refusal {
        limit: Some(LimitKind::RequestsPerMinute),
        limit_value: 5,
        free_at: Instant::now() + Duration::from_secs(3),
    };
    assert!(a.expect(r));
    let full = q.join(lane("m"), far(), CLAIM, None).unwrap_err();
    assert_eq!(full.last_refusal, Some(r));
    // Another model's line is its own.
    assert!(q.join(lane("n"), far(), CLAIM, None).is_ok());
}

#[tokio::test]
async fn a_waiter_whose_deadline_comes_before_the_heads_wake_leaves_at_once() {
    let q = leaked(10);
    let a = q.join(lane("m"), far(), CLAIM, None).unwrap();
    let short = Instant::now() + Duration::from_secs(5);
    let b = q.join(lane("m"), short, CLAIM, None).unwrap();
    let c = q.join(lane("m"), far(), CLAIM, None).unwrap();
    let r = Refusal {
        limit: Some(LimitKind::RequestsPerMinute),
        limit_value: 5,
        free_at: Instant::now() + Duration::from_secs(30),
    };
    let b_turn = tokio::spawn(async move { b.turn().await });
    tokio::task::yield_now().await;
    assert!(a.expect(r), "the head's own deadline is later");
    match b_turn.await.unwrap() {
        Turn::Hopeless(Some(seen)) => assert_eq!(seen, r),
        other => panic!("expected Hopeless, got {other:?}"),
    }
    // c can wait that long: it stays in line.
    let c_turn = tokio::spawn(async move { c.turn().await });
    tokio::task::yield_now().await;
    assert!(!c_turn.is_finished());
    drop(a);
    assert!(matches!(c_turn.await.unwrap(), Turn::Head));
}

#[tokio::test(start_paused = true)]
async fn a_waiter_times_out_at_its_deadline() {
    let q = Queues::new(limits(10));
    let _a = q.join(lane("m"), far(), CLAIM, None).unwrap();
    let b = q
        .join(
            lane("m"),
            Instant::now() + Duration::from_secs(2),
            CLAIM,
            None,
        )
        .unwrap();
    assert!(matches!(b.turn().await, Turn::TimedOut(None)));
    drop(b);
    assert_eq!(q.waiting(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_bell_wakes_a_sleeping_head_early() {
    let q = Arc::new(Queues::new(limits(10)));
    let q2 = q.clone();
    let slept = tokio::spawn(async move {
        let a = q2.join(lane("m"), far(), CLAIM, None).unwrap();
        let t0 = Instant::now();
        a.sleep_until(Instant::now() + Duration::from_secs(50))
            .await;
        t0.elapsed()
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    q.ring_all();
    let took = slept.await.unwrap();
    assert!(
        took < Duration::from_secs(50),
        "woken by the bell: {took:?}"
    );
}

fn refusal_in(secs: u64) -> Refusal {
    Refusal {
        limit: Some(LimitKind::RequestsPerMinute),
        limit_value: 2,
        free_at: Instant::now() + Duration::from_secs(secs),
    }
}

#[tokio::test]
async fn a_pinned_request_waits_in_its_projects_line_not_the_models() {
    let q = Queues::new(limits(10));
    let pinned = Lane {
        model: "m",
        family: M,
        project: Some("p1"),
    };
    let _a = q.join(pinned, far(), CLAIM, None).unwrap();
    assert!(q.busy(pinned));
    assert!(!q.busy(lane("m")), "the model's shared line is free");
    assert!(!q.busy(Lane {
        project: Some("p2"),
        ..pinned
    }));
    let b = q.join(lane("m"), far(), CLAIM, None).unwrap();
    assert!(b.is_head(), "nobody waits before it in the shared line");
    let views = q.lines();
    assert_eq!(views.len(), 2);
    assert_eq!(
        views
            .iter()
            .filter(|v| v.project.as_deref() == Some("p1"))
            .count(),
        1
    );
}

#[tokio::test]
async fn a_newcomer_that_cannot_be_admitted_in_time_is_refused_on_arrival() {
    // Two a minute; the head's room frees in 41 s (the five curls).
    let q = Queues::new(limits(10));
    let pace = Some(Pace {
        per_window: 2,
        window: Duration::from_secs(60),
    });
    let in_60 = || Instant::now() + Duration::from_secs(60);
    let head = q.join(lane("m"), in_60(), CLAIM, pace).unwrap();
    assert!(head.expect(refusal_in(41)));
    // One ahead: the window's other slot can free at 41 s too.
    let _second = q.join(lane("m"), in_60(), CLAIM, pace).unwrap();
    // Two ahead: a window more, 101 s, past its 60 s.
    let third = q.join(lane("m"), in_60(), CLAIM, pace).unwrap_err();
    match third.bound {
        Bound::Predicted { ahead, earliest } => {
            assert_eq!(ahead, 2);
            let at = earliest.unwrap() - Instant::now();
            assert!(at > Duration::from_secs(100), "{at:?}");
        }
        other => panic!("expected Predicted, got {other:?}"),
    }
    assert_eq!(third.last_refusal.map(|r| r.limit_value), Some(2));
    // With a longer allowance it may wait.
    let long = Instant::now() + Duration::from_secs(200);
    assert!(q.join(lane("m"), long, CLAIM, pace).is_ok());
}

#[tokio::test]
async fn waiters_the_heads_refusal_puts_out_of_reach_leave_at_once() {
    let q = leaked(10);
    let pace = Some(Pace {
        per_window: 1,
        window: Duration::from_secs(60),
    });
    let head = q.join(lane("m"), far(), CLAIM, pace).unwrap();
    let in_70 = Instant::now() + Duration::from_secs(70);
    let b = q.join(lane("m"), in_70, CLAIM, pace).unwrap();
    let b_turn = tokio::spawn(async move { b.turn().await });
    tokio::task::yield_now().await;
    assert!(!b_turn.is_finished());
    // Room frees for the head in 20 s: b, one behind at one a minute, needs 80 s.
    assert!(head.expect(refusal_in(20)));
    let r = tokio::time::timeout(Duration::from_secs(5), b_turn)
        .await
        .expect("told at once")
        .unwrap();
    assert!(matches!(r, Turn::Hopeless(Some(_))), "{r:?}");
}

#[test]
fn the_allowance_boundary_refuses_room_that_frees_exactly_at_its_end() {
    let end = Instant::now() + Duration::from_secs(60);
    assert!(!starts_in_time(end, end), "exactly at the end: refused");
    assert!(!starts_in_time(end - BOUNDARY / 2, end));
    assert!(starts_in_time(end - BOUNDARY, end));
    // A head already waiting is not refused for the store's millisecond rounding.
    assert!(still_in_time(end, end));
    assert!(still_in_time(end + BOUNDARY, end));
    assert!(!still_in_time(end + BOUNDARY * 2, end));
}

#[tokio::test]
async fn the_whole_queue_is_bounded_in_waiters_bytes_and_lines_whatever_the_models() {
    let q = Queues::new(QueueLimits {
        max_length: 1000,
        max_waiters_total: 50,
        max_waiting_bytes: 1 << 30,
        max_client_share: 1.0,
    });
    let names: Vec<String> = (0..100).map(|i| format!("made-up-{i}")).collect();
    let mut tickets = Vec::new();
    let mut refused = Vec::new();
    for n in &names {
        match q.join(lane(n), far(), CLAIM, None) {
            Ok(t) => tickets.push(t),
            Err(f) => refused.push(f.bound),
        }
    }
    assert_eq!(tickets.len(), 50);
    assert!(refused.iter().all(|b| *b == Bound::Waiters), "{refused:?}");
    drop(tickets);
    assert_eq!(q.waiting(), 0);

    let q = Queues::new(QueueLimits {
        max_length: 1000,
        max_waiters_total: 10_000,
        max_waiting_bytes: 1000,
        max_client_share: 1.0,
    });
    let big = Claim {
        client: 1,
        weight: 1,
        bytes: 400,
    };
    let a = q.join(lane("m"), far(), big, None).unwrap();
    let _b = q.join(lane("m"), far(), big, None).unwrap();
    assert_eq!(q.waiting_bytes(), 800);
    let c = q.join(lane("m"), far(), big, None).unwrap_err();
    assert_eq!(c.bound, Bound::Bytes);
    drop(a);
    assert_eq!(q.waiting_bytes(), 400);
    assert!(q.join(lane("m"), far(), big, None).is_ok());

    let q = Queues::new(limits(10));
    let names: Vec<String> = (0..=MAX_LINES).map(|i| format!("m{i}")).collect();
    let mut tickets = Vec::new();
    for n in &names[..MAX_LINES] {
        tickets.push(q.join(lane(n), far(), CLAIM, None).unwrap());
    }
    let over = q.join(lane(&names[MAX_LINES]), far(), CLAIM, None);
    assert_eq!(over.unwrap_err().bound, Bound::Lines);
    // An existing line still takes newcomers.
    assert!(q.join(lane("m0"), far(), CLAIM, None).is_ok());
}

#[tokio::test]
async fn one_client_holds_at_most_its_share_and_others_still_wait() {
    let q = Queues::new(QueueLimits {
        max_length: 1000,
        max_waiters_total: 10,
        max_waiting_bytes: 1 << 30,
        max_client_share: 0.5,
    });
    let one = Claim {
        client: 7,
        weight: 1,
        bytes: 10,
    };
    let other = Claim {
        client: 8,
        weight: 1,
        bytes: 10,
    };
    let mine: Vec<_> = (0..5)
        .map(|_| q.join(lane("m"), far(), one, None).unwrap())
        .collect();
    let sixth = q.join(lane("m"), far(), one, None).unwrap_err();
    assert_eq!(sixth.bound, Bound::ClientShare);
    assert!(q.join(lane("m"), far(), other, None).is_ok());
    drop(mine);
    assert!(
        q.join(lane("m"), far(), one, None).is_ok(),
        "its share is free again"
    );
}
