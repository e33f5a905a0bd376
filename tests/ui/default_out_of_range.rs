#[dataflow::model]
pub struct Counter {
    pub id: String,
    #[field(default = 40000)]
    pub small: i16,
}

fn main() {}
