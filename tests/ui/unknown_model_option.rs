#[dataflow::model(tabel = "people")]
pub struct Person {
    pub id: String,
}

fn main() {}
