//! Per-worker event counts, declared once: the stat names, the counts and their flush.
//!
//! Why: each filter adds its per-request events up per worker and flushes them on the tick (an
//! increment is a host call; the request path makes none). Written by hand, a stat lives in three
//! places (the name list that defines it, the field that counts it, the `(name, field)` pair that
//! flushes it), and nothing checks that they agree: a counter defined but never flushed reads 0
//! for ever, one flushed but never defined appears only after its first event. With [`counters!`]
//! the field is the declaration: its name (or the stat name given beside it) is what
//! [`Counters::each_name`] defines and what [`Counters::drain`] flushes.
//!
//! How: `counters! { pub struct Pending { requests, would_reject = "dry_run_would_reject"; shared:
//! SharedDataTrouble } }` declares a struct of `u64` counts (before the `;`) and of nested counts
//! (after it: any type that implements [`Counters`], such as a table indexed by an enum, written
//! by hand). [`crate::metrics::Metrics::define_counters`] and [`crate::metrics::Metrics::flush`]
//! take any of them.

/// A set of counts that can name its stats and hand over its counts.
///
/// A stat's name is given in parts, which the caller joins: a table of counts by kind can name
/// its stats `violations_` + the rule's own name without a string per stat.
pub trait Counters {
    /// Calls `f` with the name of every stat, in declaration order.
    fn each_name(f: &mut dyn FnMut(&[&str]));
    /// Calls `f` with every stat's name and its count (zeros included), then sets every count to
    /// zero.
    fn drain(&mut self, f: &mut dyn FnMut(&[&str], u64));
}

/// Declares a struct of counts that implements [`Counters`]; see the module docs.
#[macro_export]
macro_rules! counters {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $field:ident $(= $stat:literal)? ),* $(,)?
            $( ; $( $(#[$nmeta:meta])* $nested:ident : $nty:ty ),* $(,)? )?
        }
    ) => {
        $(#[$meta])*
        #[derive(Default, Debug, Clone)]
        $vis struct $name {
            $( $(#[$fmeta])* pub $field: u64, )*
            $( $( $(#[$nmeta])* pub $nested: $nty, )* )?
        }

        impl $crate::counters::Counters for $name {
            fn each_name(f: &mut dyn FnMut(&[&str])) {
                $( f(&[$crate::counters!(@stat $field $($stat)?)]); )*
                $( $( <$nty as $crate::counters::Counters>::each_name(f); )* )?
            }

            fn drain(&mut self, f: &mut dyn FnMut(&[&str], u64)) {
                $( f(&[$crate::counters!(@stat $field $($stat)?)], ::core::mem::take(&mut self.$field)); )*
                $( $( $crate::counters::Counters::drain(&mut self.$nested, f); )* )?
            }
        }
    };
    (@stat $field:ident) => { stringify!($field) };
    (@stat $field:ident $stat:literal) => { $stat };
}

#[cfg(test)]
mod tests {
    use super::Counters;

    crate::counters! {
        /// Nested counts, as a filter's shared-data trouble would be.
        struct Inner { cas_contended }
    }

    crate::counters! {
        struct Outer {
            requests,
            would_reject = "dry_run_would_reject";
            inner: Inner,
        }
    }

    fn names<C: Counters>() -> Vec<String> {
        let mut v = Vec::new();
        C::each_name(&mut |n| v.push(n.concat()));
        v
    }

    #[test]
    fn each_field_is_a_stat_named_by_the_field_or_by_the_name_beside_it() {
        assert_eq!(
            names::<Outer>(),
            ["requests", "dry_run_would_reject", "cas_contended"]
        );
    }

    #[test]
    fn draining_hands_over_every_count_with_its_name_and_leaves_zeros() {
        let mut o = Outer {
            requests: 3,
            would_reject: 0,
            inner: Inner { cas_contended: 2 },
        };
        let mut got = Vec::new();
        o.drain(&mut |n, c| got.push((n.concat(), c)));
        assert_eq!(
            got,
            [
                ("requests".to_owned(), 3),
                ("dry_run_would_reject".to_owned(), 0),
                ("cas_contended".to_owned(), 2)
            ]
        );
        let mut again = 0;
        o.drain(&mut |_, c| again += c);
        assert_eq!(again, 0);
    }

    #[test]
    fn what_is_drained_is_exactly_what_is_named() {
        let mut drained = Vec::new();
        Outer::default().drain(&mut |n, _| drained.push(n.concat()));
        assert_eq!(drained, names::<Outer>());
    }
}
