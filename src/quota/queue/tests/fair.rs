//! Fair share in one line: clients served by weight, a light client ahead of a heavy backlog,
//! a client's allowance and share while it keeps asking.

use super::*;

fn of(client: u32, weight: u32) -> Claim {
    Claim {
        client,
        weight,
        bytes: 10,
    }
}

/// The clients in the order the line serves them: the head is taken (dropped, as an admitted
/// request's ticket is) until none is left.
fn served_order(mut tickets: Vec<(u32, Ticket<'_>)>) -> Vec<u32> {
    let mut order = Vec::new();
    while !tickets.is_empty() {
        let Some(i) = tickets.iter().position(|(_, t)| t.is_head()) else {
            panic!(
                "nobody is at the front of a line with {} waiters",
                tickets.len()
            );
        };
        order.push(tickets.remove(i).0);
    }
    order
}

const HEAVY: u32 = 1;
const LIGHT: u32 = 2;

#[tokio::test]
async fn a_light_client_interleaved_with_a_heavy_burst_is_served_before_the_heavy_backlog() {
    let q = Queues::new(limits(100));
    let mut tickets = Vec::new();
    for _ in 0..10 {
        tickets.push((HEAVY, q.join(lane("m"), far(), of(HEAVY, 1), None).unwrap()));
    }
    tickets.push((LIGHT, q.join(lane("m"), far(), of(LIGHT, 1), None).unwrap()));
    for _ in 0..10 {
        tickets.push((HEAVY, q.join(lane("m"), far(), of(HEAVY, 1), None).unwrap()));
    }
    tickets.push((LIGHT, q.join(lane("m"), far(), of(LIGHT, 1), None).unwrap()));
    let order = served_order(tickets);
    let light_at: Vec<usize> = (0..order.len()).filter(|&i| order[i] == LIGHT).collect();
    // Arrival order would serve them 11th and 22nd; the fair order alternates from the head.
    assert_eq!(light_at, vec![2, 4], "{order:?}");
    assert_eq!(q.waiting(), 0);
}

#[tokio::test]
async fn clients_weighted_two_to_one_are_served_two_to_one() {
    let q = Queues::new(limits(100));
    let mut tickets = Vec::new();
    for _ in 0..30 {
        tickets.push((1, q.join(lane("m"), far(), of(1, 2), None).unwrap()));
        tickets.push((2, q.join(lane("m"), far(), of(2, 1), None).unwrap()));
    }
    let order = served_order(tickets);
    let first = &order[..30];
    let heavier = first.iter().filter(|c| **c == 1).count();
    assert_eq!((heavier, 30 - heavier), (20, 10), "{first:?}");
    // Each client's own requests keep their order: the rest are the other's 20 and 10.
    assert_eq!(order.iter().filter(|c| **c == 1).count(), 30);
}

#[tokio::test]
async fn a_light_newcomer_fits_its_allowance_where_the_heavy_backlog_would_not() {
    // Three a minute; the head's room frees in 41 s: places 0-2 at 41 s, 3-5 at 101 s.
    let q = leaked(10);
    let pace = Some(Pace {
        per_window: 3,
        window: Duration::from_secs(60),
    });
    let in_60 = || Instant::now() + Duration::from_secs(60);
    let long = || Instant::now() + Duration::from_secs(600);
    let head = q.join(lane("m"), long(), of(HEAVY, 1), pace).unwrap();
    assert!(head.expect(refusal_in(41)));
    let _h1 = q.join(lane("m"), long(), of(HEAVY, 1), pace).unwrap();
    let h2 = q.join(lane("m"), in_60(), of(HEAVY, 1), pace).unwrap();
    let _h3 = q.join(lane("m"), long(), of(HEAVY, 1), pace).unwrap();
    let _h4 = q.join(lane("m"), long(), of(HEAVY, 1), pace).unwrap();
    let h2_turn = tokio::spawn(async move { h2.turn().await });
    tokio::task::yield_now().await;
    assert!(!h2_turn.is_finished(), "third in line, it can wait");
    // Five wait before a heavy newcomer: refused at once.
    let heavy = q.join(lane("m"), in_60(), of(HEAVY, 1), pace).unwrap_err();
    match heavy.bound {
        Bound::Predicted { ahead, earliest } => {
            assert_eq!(ahead, 5);
            assert!(earliest.unwrap() - Instant::now() > Duration::from_secs(100));
        }
        other => panic!("expected Predicted, got {other:?}"),
    }
    // A light newcomer goes third in fair order: admitted at 41 s, within its 60.
    let light = q.join(lane("m"), in_60(), of(LIGHT, 1), pace);
    assert!(light.is_ok(), "{:?}", light.err());
    // It put h2 fourth, out of reach of its 60 s: h2 is told now, not at its deadline.
    let r = tokio::time::timeout(Duration::from_secs(5), h2_turn)
        .await
        .expect("told at once")
        .unwrap();
    assert!(matches!(r, Turn::Hopeless(Some(_))), "{r:?}");
}

#[tokio::test]
async fn a_client_admitted_in_the_last_window_is_expected_to_keep_asking_for_its_share() {
    // Four a minute, the head's room frees in 10 s, and the line saw light admitted twice
    // just now: those two slots free in 60 s, the two it did not see at the head's 10 s.
    let q = Queues::new(limits(100));
    let pace = Some(Pace {
        per_window: 4,
        window: Duration::from_secs(60),
    });
    let l1 = q.join(lane("m"), far(), of(LIGHT, 1), pace).unwrap();
    let l2 = q.join(lane("m"), far(), of(LIGHT, 1), pace).unwrap();
    let head = q.join(lane("m"), far(), of(HEAVY, 1), pace).unwrap();
    l1.admitted();
    drop(l1);
    l2.admitted();
    drop(l2);
    assert!(head.is_head());
    assert!(head.expect(refusal_in(10)));
    let in_65 = || Instant::now() + Duration::from_secs(65);
    // Heavy's second and third: light's next request takes its turn before the third.
    let _h1 = q.join(lane("m"), in_65(), of(HEAVY, 1), pace).unwrap();
    let _h2 = q.join(lane("m"), in_65(), of(HEAVY, 1), pace).unwrap();
    // Its fourth: three wait before it and light's two to come go first too, five in all:
    // a window past the head's 10 s, past its 65.
    let h3 = q.join(lane("m"), in_65(), of(HEAVY, 1), pace).unwrap_err();
    match h3.bound {
        Bound::Predicted { ahead, earliest } => {
            assert_eq!(ahead, 3, "those waiting before it");
            assert!(earliest.unwrap() - Instant::now() > Duration::from_secs(65));
        }
        other => panic!("expected Predicted, got {other:?}"),
    }
    // Light itself still fits: it goes third, in the slot that frees at 60 s.
    assert!(q.join(lane("m"), in_65(), of(LIGHT, 1), pace).is_ok());
}

#[tokio::test]
async fn a_waiter_dropped_from_the_middle_of_its_clients_fifo_leaves_at_once_and_the_rest_keep_their_order()
 {
    let q = leaked(100);
    let h0 = q.join(lane("m"), far(), of(HEAVY, 1), None).unwrap();
    let h1 = q.join(lane("m"), far(), of(HEAVY, 1), None).unwrap();
    let h2 = q.join(lane("m"), far(), of(HEAVY, 1), None).unwrap();
    let h3 = q.join(lane("m"), far(), of(HEAVY, 1), None).unwrap();
    let l1 = q.join(lane("m"), far(), of(LIGHT, 1), None).unwrap();
    // h2's client gives up while it waits: its future is dropped mid-wait.
    let waiting = tokio::spawn(async move { h2.turn().await });
    tokio::task::yield_now().await;
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    assert_eq!(q.waiting(), 4, "it left at once");
    assert_eq!(q.lines()[0].length, 4);
    let h4 = q.join(lane("m"), far(), of(HEAVY, 1), None).unwrap();
    let order = served_order(vec![(10, h0), (11, h1), (13, h3), (20, l1), (14, h4)]);
    // Heavy's FIFO keeps its order around the gap; light's one goes in its fair place.
    assert_eq!(order, vec![10, 11, 20, 13, 14]);
    assert_eq!(q.waiting(), 0);
    assert_eq!(q.waiting_bytes(), 0);
}

#[tokio::test]
async fn a_young_line_expects_a_client_that_joined_it_to_keep_asking() {
    // Two a minute; the head's room frees in 10 s. Nobody was admitted through the line yet,
    // but light (weight 2) joined twice just now: it is expected to send about one more
    // before 10 s are out, and its tags put that one before heavy's next. Heavy's newcomer is
    // then third, a window past the head's 10 s and past its 65: refused on arrival rather
    // than at its deadline.
    let q = Queues::new(limits(100));
    let pace = Some(Pace {
        per_window: 2,
        window: Duration::from_secs(60),
    });
    let head = q.join(lane("m"), far(), of(HEAVY, 1), pace).unwrap();
    let in_65 = || Instant::now() + Duration::from_secs(65);
    assert!(head.expect(refusal_in(10)));
    // Without light's joins, heavy's next fits: second, at the head's 10 s.
    let fits = q.join(lane("m"), in_65(), of(HEAVY, 1), pace).unwrap();
    drop(fits);
    for _ in 0..2 {
        drop(q.join(lane("m"), far(), of(LIGHT, 2), pace).unwrap());
    }
    match q
        .join(lane("m"), in_65(), of(HEAVY, 1), pace)
        .unwrap_err()
        .bound
    {
        Bound::Predicted { ahead, .. } => assert_eq!(ahead, 1, "only the head waits before it"),
        other => panic!("expected Predicted, got {other:?}"),
    }
    // Light itself is not held back by its own forecast.
    assert!(q.join(lane("m"), in_65(), of(LIGHT, 2), pace).is_ok());
}
