//! Route v0: who is asked to go. The contracted provider's nearest available
//! carer; failing that, the next provider covering the address.

use geo::{Distance, Haversine, Point};

use pingantong_store::{CarerCandidate, NewDispatch};

/// Choose a carer for a client at `home` (lat, lon) among `candidates`.
///
/// Providers are tried in contract order: a contract for the client's street
/// before one for the whole district, then by the coverage rank. Within a
/// provider the nearest carer by great-circle distance wins; without
/// coordinates for the home, the lowest carer id (a stable choice). A provider
/// at its contracted capacity counts as having nobody available.
pub fn choose(home: Option<(f64, f64)>, candidates: &[CarerCandidate]) -> Option<NewDispatch> {
    let mut providers: Vec<(bool, i64, i64)> = candidates
        .iter()
        .map(|c| (c.street.is_none(), c.rank, c.provider_id))
        .collect();
    providers.sort_unstable();
    providers.dedup_by_key(|p| p.2);
    let home = home.map(|(lat, lon)| Point::new(lon, lat));
    for (i, &(_, _, provider)) in providers.iter().enumerate() {
        let best = candidates
            .iter()
            .filter(|c| c.provider_id == provider)
            // A provider running as many jobs as its contract allows is full.
            .filter(|c| c.capacity <= 0 || c.active_jobs < c.capacity)
            .filter_map(|c| {
                let id = c.carer_id?;
                let at = Point::new(c.lon?, c.lat?);
                Some((id, home.map(|h| Haversine.distance(h, at))))
            })
            .min_by(|a, b| {
                let da = a.1.unwrap_or(f64::MAX);
                let db = b.1.unwrap_or(f64::MAX);
                da.total_cmp(&db).then(a.0.cmp(&b.0))
            });
        if let Some((carer_id, distance_m)) = best {
            return Some(NewDispatch {
                carer_id,
                provider_id: provider,
                distance_m,
                fallback: i > 0,
            });
        }
    }
    None
}

/// Great-circle metres between two (lat, lon) points.
pub fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    Haversine.distance(Point::new(a.1, a.0), Point::new(b.1, b.0))
}

/// Carers ranked for an operator choosing by hand: the same order the
/// automatic choice uses (contract, then distance), everyone available listed.
pub fn ranked(home: Option<(f64, f64)>, candidates: &[CarerCandidate]) -> Vec<NewDispatch> {
    let mut left = candidates.to_vec();
    let mut out = Vec::new();
    while let Some(pick) = choose(home, &left) {
        for c in &mut left {
            if c.carer_id == Some(pick.carer_id) {
                c.carer_id = None;
            }
        }
        out.push(pick);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carer(
        provider: i64,
        id: Option<i64>,
        at: (f64, f64),
        street: Option<&str>,
        rank: i64,
    ) -> CarerCandidate {
        CarerCandidate {
            provider_id: provider,
            carer_id: id,
            lat: id.map(|_| at.0),
            lon: id.map(|_| at.1),
            street: street.map(str::to_owned),
            rank,
            capacity: 0,
            active_jobs: 0,
        }
    }

    const HOME: (f64, f64) = (23.1291, 113.2644);

    #[test]
    fn nearest_carer_of_the_contracted_provider() {
        let c = [
            carer(1, Some(10), (23.20, 113.30), None, 0),
            carer(1, Some(11), (23.13, 113.265), None, 0),
            // closer, but another provider's
            carer(2, Some(20), HOME, None, 1),
        ];
        let d = choose(Some(HOME), &c).unwrap();
        assert_eq!((d.carer_id, d.provider_id, d.fallback), (11, 1, false));
        let m = d.distance_m.unwrap();
        assert!((50.0..300.0).contains(&m), "distance {m}");
    }

    #[test]
    fn street_contract_beats_district_contract() {
        let c = [
            carer(1, Some(10), HOME, None, 0),
            carer(3, Some(30), (23.2, 113.4), Some("北京街"), 5),
        ];
        assert_eq!(choose(Some(HOME), &c).unwrap().provider_id, 3);
    }

    #[test]
    fn fallback_when_contracted_provider_has_nobody() {
        let c = [
            carer(1, None, HOME, None, 0),
            carer(2, Some(20), (23.2, 113.4), None, 1),
        ];
        let d = choose(Some(HOME), &c).unwrap();
        assert_eq!((d.carer_id, d.fallback), (20, true));
    }

    #[test]
    fn a_provider_at_capacity_passes_to_the_fallback() {
        let mut full = carer(1, Some(10), HOME, None, 0);
        full.capacity = 3;
        full.active_jobs = 3;
        let c = [full.clone(), carer(2, Some(20), (23.2, 113.4), None, 1)];
        let d = choose(Some(HOME), &c).unwrap();
        assert_eq!((d.carer_id, d.fallback), (20, true));
        full.active_jobs = 2;
        let c = [full, carer(2, Some(20), (23.2, 113.4), None, 1)];
        assert_eq!(choose(Some(HOME), &c).unwrap().carer_id, 10);
    }

    #[test]
    fn nobody_anywhere_and_no_coverage() {
        assert_eq!(choose(Some(HOME), &[carer(1, None, HOME, None, 0)]), None);
        assert_eq!(choose(Some(HOME), &[]), None);
    }

    #[test]
    fn home_without_coordinates_still_gets_a_carer() {
        let c = [
            carer(1, Some(12), HOME, None, 0),
            carer(1, Some(11), HOME, None, 0),
        ];
        let d = choose(None, &c).unwrap();
        assert_eq!((d.carer_id, d.distance_m), (11, None));
    }
}
