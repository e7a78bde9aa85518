//! Leader election on a `coordination.k8s.io/v1` Lease, for operators run
//! with more than one replica: one leads and reconciles, the others wait.
//!
//! The holder renews the Lease every `duration / 3`. Another candidate takes
//! it once it has not been renewed for `duration`. Writes carry the Lease's
//! resourceVersion, so two candidates never both win a race (the API server
//! answers the loser with 409 Conflict).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

#[derive(Debug, Clone)]
pub struct Election {
    pub lease: String,
    pub namespace: String,
    /// This candidate (the pod name).
    pub identity: String,
    pub duration: Duration,
}

impl Election {
    pub fn renew_every(&self) -> Duration {
        self.duration / 3
    }
}

/// Whether `identity` may take or keep a Lease in this state at `now`.
pub fn may_hold(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> bool {
    let Some(spec) = spec else { return true };
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(holder) if holder == identity => true,
        Some(_) => {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            match &spec.renew_time {
                Some(MicroTime(renewed)) => {
                    now.as_second().saturating_sub(renewed.as_second()) > duration
                }
                None => true,
            }
        }
    }
}

fn spec(election: &Election, now: Timestamp, previous: Option<&LeaseSpec>) -> LeaseSpec {
    let same_holder =
        previous.and_then(|p| p.holder_identity.as_deref()) == Some(election.identity.as_str());
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(election.identity.clone()),
        lease_duration_seconds: Some(
            i32::try_from(election.duration.as_secs()).unwrap_or(i32::MAX),
        ),
        acquire_time: if same_holder {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if same_holder || previous.is_none() {
            transitions
        } else {
            transitions + 1
        }),
        ..LeaseSpec::default()
    }
}

/// One attempt to take or renew the Lease: `Ok(true)` when we hold it now.
pub async fn try_hold(api: &Api<Lease>, election: &Election) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    match api.get_opt(&election.lease).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(election.lease.clone()),
                    namespace: Some(election.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec(election, now, None)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            if !may_hold(lease.spec.as_ref(), &election.identity, now) {
                return Ok(false);
            }
            lease.spec = Some(spec(election, now, lease.spec.as_ref()));
            // The resourceVersion read above makes this a compare-and-swap.
            match api
                .replace(&election.lease, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits until this candidate holds the Lease.
pub async fn acquire(api: &Api<Lease>, election: &Election) {
    loop {
        match try_hold(api, election).await {
            Ok(true) => {
                tracing::info!(lease = %election.lease, identity = %election.identity, "leading");
                return;
            }
            Ok(false) => tracing::debug!(lease = %election.lease, "another replica leads"),
            Err(e) => tracing::warn!(error = %e, "leader election failed; trying again"),
        }
        tokio::time::sleep(election.renew_every()).await;
    }
}

/// Renews the Lease until it cannot be renewed for a whole lease duration
/// (another replica may take it from then on); returns when leadership is lost.
pub async fn keep(api: &Api<Lease>, election: &Election) {
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(election.renew_every()).await;
        match try_hold(api, election).await {
            Ok(true) => last_renewed = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::error!(lease = %election.lease, "another replica took the lease");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the lease");
                if last_renewed.elapsed() >= election.duration {
                    tracing::error!(lease = %election.lease, "lease not renewed in time: leadership lost");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xmppfed_e2e::kube_api::FakeKubeApi;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_is_taken_only_when_free_ours_or_expired() {
        assert!(may_hold(None, "a", at(0)));
        assert!(may_hold(Some(&LeaseSpec::default()), "a", at(0)));
        assert!(may_hold(Some(&held_by("a", 0)), "a", at(100)));
        assert!(!may_hold(Some(&held_by("b", 0)), "a", at(10)));
        assert!(!may_hold(Some(&held_by("b", 0)), "a", at(15)));
        assert!(may_hold(Some(&held_by("b", 0)), "a", at(16)));
    }

    #[test]
    fn a_new_holder_counts_a_transition_and_a_renewal_does_not() {
        let e = Election {
            lease: "l".into(),
            namespace: "ns".into(),
            identity: "a".into(),
            duration: Duration::from_secs(15),
        };
        let mine = spec(&e, at(0), None);
        assert_eq!(mine.lease_transitions, Some(0));
        let renewed = spec(&e, at(5), Some(&mine));
        assert_eq!(
            (renewed.lease_transitions, renewed.acquire_time.clone()),
            (Some(0), mine.acquire_time.clone())
        );
        let taken = spec(&e, at(50), Some(&held_by("b", 0)));
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(50))));
    }

    #[tokio::test]
    async fn the_second_candidate_waits_for_the_first_to_lapse() {
        let fake = FakeKubeApi::new();
        let api: Api<Lease> = Api::namespaced(fake.client(), "ops");
        let candidate = |id: &str| Election {
            lease: "xmppfed-operator".into(),
            namespace: "ops".into(),
            identity: id.into(),
            duration: Duration::from_secs(15),
        };
        assert!(
            try_hold(&api, &candidate("pod-a")).await.unwrap(),
            "a free lease is taken"
        );
        assert!(
            !try_hold(&api, &candidate("pod-b")).await.unwrap(),
            "a fresh lease is not"
        );
        assert!(
            try_hold(&api, &candidate("pod-a")).await.unwrap(),
            "the holder renews"
        );
        // The holder stops renewing: age its renewal past the duration.
        let path = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/xmppfed-operator";
        let mut lease = fake.get(path).unwrap();
        lease["spec"]["renewTime"] = serde_json::json!("2020-01-01T00:00:00.000000Z");
        fake.insert(path, lease);
        assert!(
            try_hold(&api, &candidate("pod-b")).await.unwrap(),
            "an expired lease is taken"
        );
        let lease = fake.get(path).unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], "pod-b");
        assert_eq!(lease["spec"]["leaseTransitions"], 1);
    }
}
