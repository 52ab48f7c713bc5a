//! Prints the f32 tables the generator produces (the source of `src/tables.rs`).

fn main() {
    for v in repvgg_winograd::Variant::ALL {
        let m = v.matrices();
        println!("// {v:?}");
        println!("BT:");
        for r in &m.bt {
            println!("    [{}],", r.iter().map(|x| format!("{:?}", *x as f32)).collect::<Vec<_>>().join(", "));
        }
        println!("AT:");
        for r in &m.at {
            println!("    [{}],", r.iter().map(|x| format!("{:?}", *x as f32)).collect::<Vec<_>>().join(", "));
        }
        println!("G:");
        for r in &m.g {
            println!("    [{}],", r.iter().map(|x| format!("{:?}", *x as f32)).collect::<Vec<_>>().join(", "));
        }
    }
}
