#[dataflow::model]
pub struct Reading {
    #[field(primary_key)]
    pub at: f64,
}

fn main() {}
