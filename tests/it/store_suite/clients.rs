//! The store suite's client-limit tests: a client's own rpm, tpm, rpd, concurrency and budgets,
//! checked before the pool's and settled with it, on every store.

use super::*;
use gemini_quota_proxy::clients::ClientLimits;
use gemini_quota_proxy::quota::client::ClientCaps;
use gemini_quota_proxy::quota::{ClientAdmit, ClientLimit, ClientPeriod, Reservation};

/// A request of client `name` with `limits`, estimated at `cost` micro-dollars, on a pool
/// roomy enough never to be the one refusing.
pub fn client_req(
    h: &Harness,
    name: &str,
    limits_: ClientLimits,
    tokens: u64,
    cost: u64,
) -> AdmitRequest {
    let mut r = req(
        tokens,
        vec![cand(0, "p", limits(10_000, 10_000_000, 1_000_000))],
    );
    let micros = |usd: Option<f64>| usd.map(|d| (d * 1e6).round() as u64);
    r.client = Some(ClientAdmit {
        name: name.into(),
        caps: ClientCaps {
            rpm: limits_.rpm,
            tpm: limits_.tpm,
            rpd: limits_.rpd,
            max_concurrent: limits_.max_concurrent,
            daily_micros: micros(limits_.daily_budget_usd),
            monthly_micros: micros(limits_.monthly_budget_usd),
        },
        period: ClientPeriod::at(Los_Angeles, h.clock.now_ms()),
        cost_micros: cost,
        lease_ms: 90_000,
    });
    r
}

pub async fn take(h: &Harness, r: &AdmitRequest) -> Reservation {
    match h.store.admit(r).await.unwrap() {
        AdmitOutcome::Admitted(res) => {
            assert!(
                res.client.is_some(),
                "the reservation holds its client part"
            );
            res
        }
        other => panic!("expected an admission, got {other:?}"),
    }
}

pub async fn client_refusal(h: &Harness, r: &AdmitRequest) -> (ClientLimit, u64, u64) {
    match h.store.admit(r).await.unwrap() {
        AdmitOutcome::ClientRefused {
            limit,
            limit_value,
            retry_after_ms,
        } => (limit, limit_value, retry_after_ms),
        other => panic!("expected a client refusal, got {other:?}"),
    }
}

both!(
    a_client_s_minute_limits_refuse_before_the_pool_and_write_nothing,
    |h: Harness| async move {
        let rpm = ClientLimits {
            rpm: Some(2),
            ..Default::default()
        };
        let r = client_req(&h, "team-a", rpm, 1, 0);
        take(&h, &r).await;
        h.clock.advance(5_000);
        take(&h, &r).await;
        h.clock.advance(1_000);
        assert_eq!(client_refusal(&h, &r).await, (ClientLimit::Rpm, 2, 54_000));
        // The refusal spent none of the pool's quota.
        let usage = h.store.usage().await.unwrap();
        assert_eq!(usage[0].2.minute_requests, 2);
        // Another client is not held back by this one's limit.
        let other = client_req(
            &h,
            "team-b",
            ClientLimits {
                rpm: Some(2),
                ..Default::default()
            },
            1,
            0,
        );
        take(&h, &other).await;
        h.clock.advance(54_000);
        take(&h, &r).await;

        let tpm = ClientLimits {
            tpm: Some(100),
            ..Default::default()
        };
        let r = client_req(&h, "team-t", tpm, 60, 0);
        let first = take(&h, &r).await;
        let (limit, value, _) = client_refusal(&h, &r).await;
        assert_eq!((limit, value), (ClientLimit::Tpm, 100));
        // Google counted 10: the client's window settles with the pool's.
        h.store.settle(&first, 10).await.unwrap();
        take(&h, &r).await;
    }
);

both!(
    a_client_s_day_limit_holds_until_its_own_midnight,
    |h: Harness| async move {
        let l = ClientLimits {
            rpd: Some(1),
            ..Default::default()
        };
        let r = client_req(&h, "daily", l.clone(), 1, 0);
        take(&h, &r).await;
        let period = r.client.as_ref().unwrap().period;
        let (limit, value, wait) = client_refusal(&h, &r).await;
        assert_eq!((limit, value), (ClientLimit::Rpd, 1));
        assert_eq!(wait as i64, period.day_end_ms - h.clock.now_ms());
        h.clock.set(period.day_end_ms);
        take(&h, &client_req(&h, "daily", l, 1, 0)).await;
    }
);

both!(
    a_client_s_slot_frees_at_settlement_or_when_its_lease_ends,
    |h: Harness| async move {
        let l = ClientLimits {
            max_concurrent: Some(1),
            ..Default::default()
        };
        let r = client_req(&h, "one-at-a-time", l, 5, 0);
        let first = take(&h, &r).await;
        let (limit, value, _) = client_refusal(&h, &r).await;
        assert_eq!((limit, value), (ClientLimit::Concurrent, 1));
        h.store.settle(&first, 5).await.unwrap();
        let _second = take(&h, &r).await;
        assert_eq!(client_refusal(&h, &r).await.0, ClientLimit::Concurrent);
        // Never settled (its replica died): the slot frees itself when its lease ends.
        h.clock.advance(90_001);
        take(&h, &r).await;
    }
);

both!(
    a_client_s_budget_reserves_the_estimate_and_settles_to_the_real_cost,
    |h: Harness| async move {
        // Mid-month (T0 is the last day of January): the next day is in the same month.
        h.clock.advance(5 * 86_400_000);
        let l = ClientLimits {
            daily_budget_usd: Some(1.0),
            monthly_budget_usd: Some(1.5),
            ..Default::default()
        };
        let r = client_req(&h, "spender", l.clone(), 10, 400_000);
        let c = r.client.clone().unwrap();
        let mut first = take(&h, &r).await;
        take(&h, &r).await;
        // 800,000 spent or reserved: another 400,000 would pass the daily 1,000,000.
        let (limit, value, wait) = client_refusal(&h, &r).await;
        assert_eq!((limit, value), (ClientLimit::DailyBudget, 1_000_000));
        assert_eq!(wait as i64, c.period.day_end_ms - h.clock.now_ms());
        let key = [("spender".into(), c.period.day, c.period.month)];
        assert_eq!(
            h.store.client_spend(&key).await.unwrap(),
            vec![(800_000, 800_000)]
        );
        // The first cost 100,000: its reservation becomes that.
        first.client.as_mut().unwrap().actual_cost_micros = Some(100_000);
        h.store.settle(&first, 10).await.unwrap();
        assert_eq!(
            h.store.client_spend(&key).await.unwrap(),
            vec![(500_000, 500_000)]
        );
        take(&h, &r).await;
        // A new day: the daily budget is fresh, the month's 900,000 + 400,000 is not.
        h.clock.set(c.period.day_end_ms);
        let r = client_req(&h, "spender", l, 10, 700_000);
        let c = r.client.clone().unwrap();
        let (limit, value, wait) = client_refusal(&h, &r).await;
        assert_eq!((limit, value), (ClientLimit::MonthlyBudget, 1_500_000));
        assert_eq!(wait as i64, c.period.month_end_ms - h.clock.now_ms());
    }
);
