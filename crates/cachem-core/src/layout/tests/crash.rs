//! Crash simulation: every fault point of every operation, under both
//! compaction policies, recovers to exactly "before" or "after".

use super::*;
use crate::sys::failpoint::{sim, POINTS};

/// Runs `op` with a simulated crash at the `nth` hit of `point`, recovers,
/// and checks the result is exactly `before` or exactly `after`.
type CrashOp = dyn Fn(&mut Layout<'_>) -> Result<()>;

fn crash_case(policy: Compaction, point: &'static str, nth: u32, batch: bool, op: &CrashOp) -> Option<bool> {
    let mut img = Img::with(65536, policy);
    let mut l = img.l();
    for i in 0..40u32 {
        l.insert(if i % 2 == 0 { A } else { O }, tag(i % 5), &vec![i as u8; (i as usize * 7) % 90]).unwrap();
    }
    for i in (0..40).step_by(6) {
        let id = l.next_of_owner(A, Some(RecordId::new(i, 0))).unwrap();
        l.remove(id).unwrap();
    }
    let before = snapshot(&l);
    // The same op on a copy, uninterrupted, gives "after".
    let mut copy = Img(img.0.clone());
    let mut lc = copy.l();
    op(&mut lc).unwrap();
    let after = snapshot(&lc);
    let mut l = img.l();
    sim::arm(point, nth);
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(&mut l)));
    let missed = sim::disarm();
    if missed {
        res.unwrap().unwrap();
        return None;
    }
    assert!(res.is_err(), "the simulated crash happened");
    let mut l = img.l();
    // The journal a crash leaves always fits (recovery checks it first).
    l.check_journal().unwrap_or_else(|e| panic!("{point}#{nth}: a true journal is refused: {e}"));
    l.recover().unwrap_or_else(|e| panic!("{point}#{nth}: recovery failed: {e}"));
    l.verify().unwrap();
    let got = snapshot(&l);
    if batch {
        // A batch removal cut short by a crash removed some of its victims,
        // each entirely: every record is as before or removed, and every
        // record kept by the batch is there.
        assert!(got.iter().all(|r| before.contains(r)), "{point}#{nth}: a record changed");
        assert!(after.iter().all(|r| got.contains(r)), "{point}#{nth}: a kept record was lost");
    } else {
        assert!(got == before || got == after, "{point}#{nth}: state is neither before nor after");
    }
    // The region stays usable.
    let x = l.insert(A, tag(9), b"after recovery").unwrap();
    l.remove(x).unwrap();
    l.verify().unwrap();
    Some(got == after)
}

#[test]
fn every_fault_point_recovers_to_before_or_after() {
    let ops: Vec<(&str, Box<CrashOp>)> = vec![
        ("compact", Box::new(|l: &mut Layout<'_>| l.compact_now().map(|_| ()))),
        (
            "remove-then-compact",
            Box::new(|l: &mut Layout<'_>| {
                let id = l.iter().nth(7).unwrap().0.id;
                l.remove(id)?;
                l.compact_now().map(|_| ())
            }),
        ),
        ("insert", Box::new(|l: &mut Layout<'_>| l.insert(A, tag(3), &[0xAB; 50]).map(|_| ()))),
        ("remove-front", Box::new(|l: &mut Layout<'_>| l.remove(l.next_of_owner(O, None).unwrap()))),
        (
            "remove-mid",
            Box::new(|l: &mut Layout<'_>| {
                let id = l.iter().nth(15).unwrap().0.id;
                l.remove(id)
            }),
        ),
        ("purge", Box::new(|l: &mut Layout<'_>| l.purge(O, 1).map(|_| ()))),
        ("retain", Box::new(|l: &mut Layout<'_>| l.retain(|m, _| m.len % 3 != 0).map(|_| ()))),
    ];
    // Deferred also with tiny compaction steps: every compaction then
    // pauses between runs, so the operations start from, run in, and are
    // killed in paused compactions.
    for (policy, step) in [(Compaction::Eager, 0), (Compaction::Deferred, 0), (Compaction::Deferred, 64)] {
        crate::layout::set_compaction_step(step);
        let mut hits = 0;
        let mut points = std::collections::BTreeSet::new();
        for (name, op) in &ops {
            for point in POINTS {
                for nth in 1..=3 {
                    let batch = matches!(*name, "purge" | "retain");
                    if let Some(done) = crash_case(policy, point, nth, batch, op.as_ref()) {
                        hits += 1;
                        points.insert(*point);
                        // A crash before the journal/publish rolls back; after, it completes.
                        let started = point.starts_with("compact") || point.starts_with("defer");
                        if started && !(batch && policy == Compaction::Deferred) {
                            assert!(
                                done,
                                "{policy:?} {name} at {point}: a started compaction/remove completes"
                            );
                        }
                    }
                }
            }
        }
        assert!(hits >= 25, "{policy:?} step {step}: only {hits} fault-point cases were reached");
        // Every point of the policy's paths is reached by some operation.
        for p in POINTS {
            let applies = match policy {
                Compaction::Eager => !p.starts_with("defer") && *p != "compact.after_journal",
                Compaction::Deferred => !p.starts_with("remove."),
            };
            assert_eq!(points.contains(p), applies, "{policy:?} step {step}: point {p}");
        }
    }
    crate::layout::set_compaction_step(0);
}
