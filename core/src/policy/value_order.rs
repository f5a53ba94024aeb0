//! Rego's total order over JSON values, which `sort` applies to the step-up declarations the
//! decision lists: null < booleans < numbers < strings < arrays < objects. Numbers compare by
//! value, strings by bytes, arrays element-wise then by length, and objects by their sorted
//! keys paired with values, then by size.

use std::cmp::Ordering;

use serde_json::{Number, Value};

fn rank(value: &Value) -> u8 {
    match value {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
    }
}

fn exact(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

fn numbers(a: &Number, b: &Number) -> Ordering {
    match (exact(a), exact(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => {
            let (x, y) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
    }
}

/// Compares two values in Rego's order.
pub(crate) fn compare(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => numbers(x, y),
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Array(x), Value::Array(y)) => x
            .iter()
            .zip(y)
            .map(|(p, q)| compare(p, q))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| x.len().cmp(&y.len())),
        (Value::Object(x), Value::Object(y)) => {
            let mut xs: Vec<_> = x.iter().collect();
            let mut ys: Vec<_> = y.iter().collect();
            xs.sort_by(|p, q| p.0.as_bytes().cmp(q.0.as_bytes()));
            ys.sort_by(|p, q| p.0.as_bytes().cmp(q.0.as_bytes()));
            xs.iter()
                .zip(&ys)
                .map(|((ka, va), (kb, vb))| {
                    ka.as_bytes()
                        .cmp(kb.as_bytes())
                        .then_with(|| compare(va, vb))
                })
                .find(|o| o.is_ne())
                .unwrap_or_else(|| xs.len().cmp(&ys.len()))
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

/// `sort({…})`: ascending, with values equal in Rego's order kept once.
pub(crate) fn sorted_set(mut values: Vec<Value>) -> Vec<Value> {
    values.sort_by(compare);
    values.dedup_by(|later, earlier| compare(later, earlier).is_eq());
    values
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn orders_across_and_within_types() {
        let sorted = sorted_set(vec![
            json!({"tier": "b"}),
            json!("s"),
            json!(2),
            json!(null),
            json!([1]),
            json!(true),
            json!({"tier": "a", "ttl_seconds": 60}),
            json!({"tier": "a"}),
            json!(1.0),
            json!(1),
        ]);
        assert_eq!(
            sorted,
            vec![
                json!(null),
                json!(true),
                json!(1.0),
                json!(2),
                json!("s"),
                json!([1]),
                json!({"tier": "a"}),
                json!({"tier": "a", "ttl_seconds": 60}),
                json!({"tier": "b"}),
            ]
        );
    }

    #[test]
    fn objects_compare_key_then_value() {
        // {"approver": …} sorts before {"tier": …} because of its first key.
        assert!(compare(
            &json!({"approver": "z", "tier": "z"}),
            &json!({"tier": "a"})
        )
        .is_lt());
        assert!(compare(&json!({"tier": "a"}), &json!({"tier": "b"})).is_lt());
    }
}
