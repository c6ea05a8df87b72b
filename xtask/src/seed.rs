//! `cargo xtask seed-listings --count N`: realistic, varied listings
//! (animals of many breeds, products, services; several regions and
//! currencies), embedded in batches by the local embedding service and
//! written straight to PostgreSQL (one binary `COPY`), the way the marketplace
//! Worker stores them.
//!
//! The generator is deterministic: listing `i` of seed `s` is always the
//! same, with id `lst_s<s>n<i>`, so the relevance evaluation can tell what a
//! listing is from its id alone.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Bump when [`generate`] changes what it produces: `bench search` caches the
/// embeddings of generated listings under this version.
pub const GENERATOR_VERSION: u32 = 2;

/// What a listing is, for the relevance judgments of `eval search`.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct Listing {
    pub id: String,
    /// `animal`, `product` or `service`.
    pub category: &'static str,
    /// The product or service kind (`aquarium_heater`, `dog_walking`), or
    /// `animal`.
    pub kind: &'static str,
    pub tags: Vec<&'static str>,
    pub title: String,
    pub description: String,
    pub species: &'static str,
    pub breed: Option<&'static str>,
    pub age_months: Option<i32>,
    pub region: &'static str,
    pub currency: &'static str,
    pub price_minor: i64,
    pub quantity: i32,
}

/// splitmix64: small, fast, and the same on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// (region, currency): Germany, France, UK, Switzerland, US, Japan.
const REGIONS: &[(&str, &str)] = &[
    ("berlin", "EUR"),
    ("munich", "EUR"),
    ("hamburg", "EUR"),
    ("paris", "EUR"),
    ("lyon", "EUR"),
    ("london", "GBP"),
    ("manchester", "GBP"),
    ("zurich", "CHF"),
    ("geneva", "CHF"),
    ("new-york", "USD"),
    ("boston", "USD"),
    ("tokyo", "JPY"),
];

struct Breed {
    species: &'static str,
    name: &'static str,
    /// What the young are called.
    young: &'static str,
    adult: &'static str,
    size: &'static str,
    /// Typical price of one animal in EUR.
    price: f64,
}

const fn b(
    species: &'static str,
    name: &'static str,
    young: &'static str,
    adult: &'static str,
    size: &'static str,
    price: f64,
) -> Breed {
    Breed { species, name, young, adult, size, price }
}

const BREEDS: &[Breed] = &[
    b("dog", "Labrador Retriever", "puppy", "dog", "large", 900.0),
    b("dog", "German Shepherd", "puppy", "dog", "large", 950.0),
    b("dog", "French Bulldog", "puppy", "dog", "small", 1500.0),
    b("dog", "Dachshund", "puppy", "dog", "small", 800.0),
    b("dog", "Border Collie", "puppy", "dog", "medium", 700.0),
    b("dog", "Beagle", "puppy", "dog", "medium", 750.0),
    b("dog", "Golden Retriever", "puppy", "dog", "large", 1100.0),
    b("dog", "Pug", "puppy", "dog", "small", 1000.0),
    b("dog", "Chihuahua", "puppy", "dog", "small", 600.0),
    b("dog", "Jack Russell Terrier", "puppy", "dog", "small", 550.0),
    b("dog", "Cocker Spaniel", "puppy", "dog", "medium", 850.0),
    b("dog", "Greyhound", "puppy", "dog", "large", 300.0),
    b("cat", "Maine Coon", "kitten", "cat", "large", 900.0),
    b("cat", "British Shorthair", "kitten", "cat", "medium", 800.0),
    b("cat", "Siamese", "kitten", "cat", "medium", 600.0),
    b("cat", "Persian", "kitten", "cat", "medium", 700.0),
    b("cat", "Ragdoll", "kitten", "cat", "large", 950.0),
    b("cat", "Bengal", "kitten", "cat", "medium", 1200.0),
    b("cat", "Sphynx", "kitten", "cat", "medium", 1300.0),
    b("cat", "Norwegian Forest", "kitten", "cat", "large", 850.0),
    b("cat", "tabby", "kitten", "cat", "medium", 90.0),
    b("bird", "budgie", "young budgie", "budgie", "small", 25.0),
    b("bird", "cockatiel", "young cockatiel", "cockatiel", "small", 90.0),
    b("bird", "canary", "young canary", "canary", "small", 40.0),
    b("bird", "African grey parrot", "young African grey", "African grey parrot", "medium", 1400.0),
    b("bird", "lovebird", "young lovebird pair", "lovebird pair", "small", 80.0),
    b("fish", "betta", "young betta", "betta fish", "small", 15.0),
    b("fish", "goldfish", "young goldfish", "goldfish", "small", 5.0),
    b("fish", "guppy", "guppy fry", "guppies", "small", 3.0),
    b("fish", "koi", "young koi", "koi carp", "large", 120.0),
    b("fish", "neon tetra", "neon tetras", "neon tetra shoal", "small", 2.5),
    b("reptile", "bearded dragon", "baby bearded dragon", "bearded dragon", "medium", 150.0),
    b("reptile", "leopard gecko", "baby leopard gecko", "leopard gecko", "small", 80.0),
    b("reptile", "corn snake", "hatchling corn snake", "corn snake", "medium", 90.0),
    b("reptile", "ball python", "hatchling ball python", "ball python", "medium", 150.0),
    b("reptile", "Hermann's tortoise", "baby tortoise", "Hermann's tortoise", "small", 200.0),
    b("rabbit", "Holland Lop", "baby bunny", "rabbit", "small", 70.0),
    b("rabbit", "Netherland Dwarf", "baby bunny", "rabbit", "small", 60.0),
    b("rabbit", "Lionhead", "baby bunny", "rabbit", "small", 65.0),
    b("rodent", "guinea pig", "baby guinea pig", "guinea pig", "small", 30.0),
    b("rodent", "Syrian hamster", "young hamster", "hamster", "small", 20.0),
    b("rodent", "gerbil", "young gerbils", "gerbil pair", "small", 15.0),
    b("rodent", "chinchilla", "young chinchilla", "chinchilla", "small", 150.0),
    b("rodent", "fancy rat", "young rats", "rat pair", "small", 20.0),
    b("horse", "Haflinger", "foal", "horse", "large", 6000.0),
    b("horse", "Shetland pony", "foal", "pony", "medium", 1500.0),
    b("horse", "Arabian", "foal", "horse", "large", 9000.0),
    b("horse", "Friesian", "foal", "horse", "large", 12000.0),
];

struct Product {
    kind: &'static str,
    species: &'static str,
    titles: &'static [&'static str],
    details: &'static [&'static str],
    tags: &'static [&'static str],
    price: f64,
    service: bool,
}

const fn p(
    kind: &'static str,
    species: &'static str,
    titles: &'static [&'static str],
    details: &'static [&'static str],
    tags: &'static [&'static str],
    price: f64,
) -> Product {
    Product { kind, species, titles, details, tags, price, service: false }
}

const fn s(
    kind: &'static str,
    species: &'static str,
    titles: &'static [&'static str],
    details: &'static [&'static str],
    tags: &'static [&'static str],
    price: f64,
) -> Product {
    Product { kind, species, titles, details, tags, price, service: true }
}

const PRODUCTS: &[Product] = &[
    p(
        "puppy_food",
        "dog",
        &["Puppy food for small breeds, 3 kg", "Small breed puppy kibble", "Grain-free puppy food, mini breeds"],
        &[
            "Small kibble size for little mouths, with DHA for brain development.",
            "Chicken and rice recipe for puppies up to 12 months.",
            "Sealed bag, best before next year.",
        ],
        &["food", "puppy", "small_breed"],
        25.0,
    ),
    p(
        "dog_food",
        "dog",
        &["Adult dog food, 12 kg", "Grain-free dry dog food", "Senior dog kibble, joint support"],
        &[
            "Salmon and potato, for sensitive stomachs.",
            "High protein recipe for active dogs.",
            "With glucosamine for older joints.",
        ],
        &["food"],
        45.0,
    ),
    p(
        "cat_food",
        "cat",
        &["Senior cat food, 2 kg", "Wet cat food, 24 pouches", "Indoor cat dry food"],
        &[
            "Tuna in jelly, a mix of flavours.",
            "For cats over 7 years, kidney friendly.",
            "Hairball control formula for indoor cats.",
        ],
        &["food"],
        20.0,
    ),
    p(
        "bird_seed",
        "bird",
        &["Budgie seed mix, 1 kg", "Parrot food with nuts and fruit", "Canary seed blend"],
        &["Millet, canary seed and oats.", "Vitamin enriched, no artificial colours."],
        &["food"],
        8.0,
    ),
    p(
        "fish_food",
        "fish",
        &["Tropical fish flakes, 250 ml", "Goldfish pellets", "Koi food sticks, 5 l"],
        &["Colour enhancing formula that floats.", "Will not cloud the water."],
        &["food"],
        9.0,
    ),
    p(
        "rabbit_hay",
        "rabbit",
        &["Timothy hay for rabbits, 2.5 kg", "Meadow hay bale for rabbits and guinea pigs"],
        &["Dust-extracted, sweet smelling, long strands.", "Harvested this summer, stored dry."],
        &["food"],
        12.0,
    ),
    p(
        "aquarium_heater",
        "fish",
        &["Aquarium heater 50 W", "Adjustable aquarium heater 100 W", "Titanium tank heater 200 W"],
        &[
            "Keeps tropical tanks at a steady temperature, thermostat built in.",
            "Submersible, shatterproof, with a suction cup mount.",
            "Barely used, works perfectly, for tanks up to 120 litres.",
        ],
        &["aquarium", "heating"],
        22.0,
    ),
    p(
        "aquarium_filter",
        "fish",
        &["Internal aquarium filter", "External canister filter for aquariums"],
        &["Quiet pump, three stage filtration, keeps the water clear.", "Includes sponges and ceramic rings."],
        &["aquarium"],
        45.0,
    ),
    p(
        "aquarium_tank",
        "fish",
        &["60 litre aquarium tank with lid", "Nano aquarium 20 l, LED light"],
        &["Glass tank with LED lighting, no leaks.", "Starter set with gravel and plastic plants."],
        &["aquarium"],
        80.0,
    ),
    p(
        "terrarium",
        "reptile",
        &["Glass terrarium 90 x 45 x 45 cm", "Wooden vivarium for bearded dragons"],
        &["Front opening doors, mesh top for ventilation.", "Sliding glass doors, cable holes for lamps."],
        &["reptile_housing"],
        150.0,
    ),
    p(
        "heat_lamp",
        "reptile",
        &["Reptile basking lamp 75 W", "Ceramic heat emitter with thermostat", "Heat mat for reptiles"],
        &["Creates a warm basking spot, keeps your reptile warm at night.", "Thermostat included, safe for vivariums."],
        &["heating"],
        30.0,
    ),
    p(
        "uv_lamp",
        "reptile",
        &["UVB tube for reptiles, 10%", "UV light for tortoise table"],
        &["Essential UVB for calcium and healthy bones.", "Replaced every 12 months, this one is new."],
        &["lighting"],
        35.0,
    ),
    p(
        "dog_lead",
        "dog",
        &["Leather dog lead, 2 m", "Retractable dog leash, 5 m", "Reflective dog leash"],
        &["Strong brass clip, soft handle, for daily walks.", "Visible at night for evening walks."],
        &["walking"],
        18.0,
    ),
    p(
        "dog_harness",
        "dog",
        &["No-pull dog harness, size M", "Padded harness for small dogs"],
        &["Stops pulling on walks, adjustable straps.", "Breathable mesh, easy to put on."],
        &["walking"],
        28.0,
    ),
    p(
        "dog_bed",
        "dog",
        &["Orthopaedic dog bed, large", "Washable dog bed, donut shape"],
        &["Memory foam, ideal for older dogs with stiff joints.", "Machine washable cover, non-slip base."],
        &["bed"],
        55.0,
    ),
    p(
        "dog_crate",
        "dog",
        &["Folding dog crate, 91 cm", "Travel crate for small dogs"],
        &["Two doors, removable tray, folds flat for the car.", "Airline approved, ventilated."],
        &["travel"],
        60.0,
    ),
    p(
        "cat_tree",
        "cat",
        &["Cat tree with scratching posts, 150 cm", "Sisal scratching post", "Wall mounted cat shelves"],
        &["Sisal posts, hammock and a cosy cave for naps.", "Sturdy base, for big cats too."],
        &["scratching"],
        65.0,
    ),
    p(
        "litter_box",
        "cat",
        &["Hooded cat litter box", "Self-cleaning litter tray"],
        &["Carbon filter keeps odours in, easy to clean.", "Large entrance, fits big cats."],
        &["hygiene"],
        35.0,
    ),
    p(
        "cat_carrier",
        "cat",
        &["Cat carrier, top loading", "Soft cat travel bag"],
        &["For vet visits, with a seat belt loop.", "Padded, airy, folds flat."],
        &["travel"],
        30.0,
    ),
    p(
        "bird_cage",
        "bird",
        &["Large bird cage with stand", "Budgie cage with perches"],
        &["Room for two birds, removable tray, feeding cups.", "Includes toys, swing and a bath."],
        &["bird_housing"],
        90.0,
    ),
    p(
        "rabbit_hutch",
        "rabbit",
        &["Two storey rabbit hutch with run", "Indoor rabbit cage 120 cm"],
        &["Weatherproof wood, ramp and a closed sleeping area.", "Lots of room to hop, easy to clean."],
        &["rodent_housing"],
        120.0,
    ),
    p(
        "hamster_cage",
        "rodent",
        &["Hamster cage with wheel and tubes", "Guinea pig cage, 140 cm"],
        &["Deep base for burrowing, silent wheel.", "Plenty of floor space for two guinea pigs."],
        &["rodent_housing"],
        50.0,
    ),
    p(
        "saddle",
        "horse",
        &["General purpose saddle, 17 inch", "Dressage saddle, medium tree"],
        &["Leather in good condition, recently checked by a saddler.", "Comes with girth and stirrups."],
        &["riding"],
        600.0,
    ),
    p(
        "horse_rug",
        "horse",
        &["Turnout rug, 150 g, 6'3", "Fleece cooler rug"],
        &["Waterproof and breathable, used one winter.", "Wicks sweat after exercise."],
        &["riding"],
        70.0,
    ),
    p(
        "grooming_brush",
        "dog",
        &["Deshedding brush for dogs and cats", "Slicker brush for long coats"],
        &["Removes loose undercoat, less hair on the sofa.", "Gentle pins, self-cleaning button."],
        &["grooming"],
        15.0,
    ),
    p(
        "dog_toy",
        "dog",
        &["Indestructible chew toy", "Puzzle feeder for dogs", "Rope toy set"],
        &["Keeps clever dogs busy, slows down fast eaters.", "Natural rubber, dishwasher safe."],
        &["toy"],
        12.0,
    ),
    p(
        "cat_toy",
        "cat",
        &["Interactive cat wand toy", "Catnip mice, set of 6"],
        &["Feathers and a bell, for indoor cats that need to play.", "Organic catnip."],
        &["toy"],
        8.0,
    ),
    s(
        "dog_walking",
        "dog",
        &["Dog walking, one hour", "Group dog walks in the park", "Daily dog walker"],
        &[
            "Experienced and insured, I walk dogs of every size twice a day.",
            "Off-lead running in a safe park, pick-up from your door.",
        ],
        &["walking"],
        15.0,
    ),
    s(
        "pet_sitting",
        "other",
        &["Pet sitting in your home", "Holiday pet sitter for cats and small animals"],
        &["I feed, play with and look after your pets while you are away.", "Daily visits, photos sent every evening."],
        &["care"],
        20.0,
    ),
    s(
        "cat_sitting",
        "cat",
        &["Cat sitting, home visits", "Cat sitter while you travel"],
        &["Two visits a day: food, litter, cuddles.", "Experienced with shy and older cats, can give medication."],
        &["care"],
        18.0,
    ),
    s(
        "dog_grooming",
        "dog",
        &["Dog grooming, wash and cut", "Mobile dog groomer"],
        &["Bath, nail clipping and a breed cut at your home.", "Gentle with nervous dogs."],
        &["grooming"],
        45.0,
    ),
    s(
        "dog_training",
        "dog",
        &["Puppy training classes", "Obedience training for dogs", "Recall training for reactive dogs"],
        &["Small groups, positive reinforcement, six weekly sessions.", "Learn sit, stay and loose-lead walking."],
        &["training"],
        90.0,
    ),
    s(
        "boarding",
        "dog",
        &["Dog boarding kennel", "Home boarding for dogs"],
        &["A home from home while you travel, big garden.", "Heated kennels, daily walks."],
        &["care"],
        30.0,
    ),
    s(
        "vet_visit",
        "other",
        &["Vet home visits", "Vaccination appointments at home"],
        &["Qualified vet, checkups and vaccinations at your home.", "Less stress for anxious pets."],
        &["health"],
        70.0,
    ),
    s(
        "horse_livery",
        "horse",
        &["Full livery for horses", "DIY livery with grazing"],
        &["Stable, turnout and hay included, arena access.", "Quiet yard with good hacking."],
        &["care"],
        350.0,
    ),
    s(
        "aquarium_service",
        "fish",
        &["Aquarium cleaning and maintenance", "Fish tank setup service"],
        &["Water changes, filter cleaning and water tests.", "We set up and cycle your new tank."],
        &["aquarium"],
        40.0,
    ),
    s(
        "pet_taxi",
        "other",
        &["Pet taxi to the vet", "Pet transport across town"],
        &["Safe transport in crates, for every kind of pet.", "Available at weekends."],
        &["travel"],
        25.0,
    ),
];

/// JPY has no minor unit; the rest have two decimals.
fn price_minor(eur: f64, currency: &str) -> i64 {
    let (rate, minor) = match currency {
        "GBP" => (0.86, 100.0),
        "CHF" => (0.95, 100.0),
        "USD" => (1.08, 100.0),
        "JPY" => (160.0, 1.0),
        _ => (1.0, 100.0),
    };
    let value = eur * rate;
    // Prices people set: whole units for big amounts, .99 or .50 for small.
    let rounded = if value >= 100.0 { (value / 5.0).round() * 5.0 } else { (value * 2.0).round() / 2.0 };
    ((rounded.max(1.0)) * minor).round() as i64
}

/// Listing `index` of `seed`.
pub fn generate(seed: u64, index: u64) -> Listing {
    let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(index));
    let (region, currency) = *rng.pick(REGIONS);
    let id = format!("lst_s{seed}n{index}");
    // About 45% animals, 40% products, 15% services.
    let roll = rng.below(100);
    if roll < 45 {
        let breed = rng.pick(BREEDS);
        let young = rng.chance(45);
        let age = if young { 2 + rng.below(8) as i32 } else { 12 + rng.below(150) as i32 };
        let senior = age >= 96;
        let mut tags = vec![];
        let temperament: &str = if senior {
            tags.push("calm");
            tags.push("senior");
            rng.pick::<&str>(&["Calm", "Gentle", "Quiet", "Relaxed"])
        } else if young {
            tags.push("young");
            rng.pick::<&str>(&["Playful", "Curious", "Lively", "Cheeky"])
        } else {
            rng.pick::<&str>(&["Friendly", "Affectionate", "Calm", "Loyal", "Sociable"])
        };
        if temperament == "Calm" {
            tags.push("calm");
        }
        let noun = if young { breed.young } else { breed.adult };
        let title = match (breed.species, breed.name == "tabby") {
            ("cat", true) => format!("{temperament} {} tabby {}", if young { "little" } else { "domestic" }, noun),
            ("dog" | "cat" | "rabbit", _) => format!("{temperament} {} {noun}", breed.name),
            _ => format!("{temperament} {noun}"),
        };
        let years = age / 12;
        let age_text = match years {
            0 => format!("{age} months old"),
            1 => "one year old".to_string(),
            _ => format!("{years} years old"),
        };
        let mut sentences = vec![format!(
            "{} {}, {age_text}.",
            rng.pick(&["Our", "My", "This lovely", "A sweet"]),
            breed.name.to_string() + if breed.species == "horse" { " horse" } else { "" }
        )];
        let home = match (breed.species, breed.size, senior) {
            (_, _, true) => {
                tags.push("flat");
                "Would suit a quiet home or a flat, enjoys long naps and gentle company."
            }
            ("dog", "large", _) => {
                tags.push("garden");
                "Needs a home with a garden and long daily walks."
            }
            ("dog", "small", _) | ("cat", _, _) => {
                tags.push("flat");
                "Happy in a flat, good with children."
            }
            _ => "Used to being handled, easy to care for.",
        };
        sentences.push(home.to_string());
        sentences.push(
            rng.pick(&[
                "Vaccinated and microchipped.",
                "Health checked by a vet.",
                "Comes with papers and a health record.",
                "Neutered, all vaccinations up to date.",
            ])
            .to_string(),
        );
        if rng.chance(40) {
            sentences.push(
                rng.pick(&[
                    "Rehoming due to a move abroad.",
                    "Only to a loving home.",
                    "Viewing welcome at weekends.",
                    "Starter kit included.",
                ])
                .to_string(),
            );
        }
        let factor = if senior { 0.3 } else { 0.6 + rng.unit() * 0.8 };
        return Listing {
            id,
            category: "animal",
            kind: "animal",
            tags,
            title,
            description: sentences.join(" "),
            species: breed.species,
            breed: Some(breed.name),
            age_months: Some(age),
            region,
            currency,
            price_minor: price_minor(breed.price * factor, currency),
            quantity: 1,
        };
    }
    let pool: Vec<&Product> = PRODUCTS.iter().filter(|p| p.service == (roll >= 85)).collect();
    let product = *rng.pick(&pool);
    let title = rng.pick(product.titles).to_string();
    let mut sentences = vec![rng.pick(product.details).to_string()];
    if product.details.len() > 1 && rng.chance(60) {
        let other = rng.pick(product.details).to_string();
        if other != sentences[0] {
            sentences.push(other);
        }
    }
    sentences.push(if product.service {
        rng.pick(&["References available.", "First session free.", "Book by message.", "Weekdays and weekends."])
            .to_string()
    } else {
        rng.pick(&["Pick-up or postage.", "New, unopened.", "Used, good condition.", "Smoke-free, pet-friendly home."])
            .to_string()
    });
    let price_minor = price_minor(product.price * (0.6 + rng.unit() * 0.9), currency);
    let quantity = if product.service { 20 } else { 1 + rng.below(5) as i32 };
    // Version 2: the seller's own words. Without them, products and services
    // came from ~1,600 texts, each repeated ~35 times in 100,000 listings,
    // which no real marketplace looks like (a seller with 35 units lists one
    // listing of quantity 35) and which degrades an HNSW graph: identical
    // vectors keep only each other as neighbours.
    sentences.push(seller_note(&mut rng, product.service));
    Listing {
        id,
        category: if product.service { "service" } else { "product" },
        kind: product.kind,
        tags: product.tags.to_vec(),
        title,
        description: sentences.join(" "),
        species: product.species,
        breed: None,
        age_months: None,
        region,
        currency,
        price_minor,
        quantity,
    }
}

/// A sentence or two of a seller's own about a product or service: when it
/// was bought, how to collect it, why it is sold; experience, area, a name.
fn seller_note(rng: &mut Rng, service: bool) -> String {
    const DAYS: &[&str] = &["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    const NAMES: &[&str] = &[
        "Anna", "Ben", "Clara", "David", "Emma", "Felix", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Leon", "Mia",
        "Noah", "Olga", "Paul", "Rosa", "Sami", "Tara", "Yusuf",
    ];
    if service {
        let years = 2 + rng.below(19);
        let area = rng.pick(&["north", "south", "east", "west", "centre"]);
        let reach = rng.pick(&["", ", weekdays only", " and nearby towns"]);
        let name = rng.pick(NAMES);
        return format!("{years} years of experience. Covering the {area} of the city{reach}. Ask for {name}.");
    }
    let bought = format!("Bought {} {} ago.", 2 + rng.below(10), rng.pick(&["weeks", "months"]));
    let collect = format!(
        "Collection on {} {}, or delivery by courier.",
        rng.pick(DAYS),
        rng.pick(&["mornings", "afternoons", "evenings"])
    );
    let reason = format!(
        "Reason for selling: {}.",
        rng.pick(&[
            "we moved",
            "changed brands",
            "a duplicate gift",
            "my pet prefers another one",
            "clearing out the garage",
            "bought the wrong size",
            "no longer needed",
            "upgraded to a bigger one",
        ])
    );
    match rng.below(3) {
        0 => format!("{bought} {collect}"),
        1 => format!("{bought} {reason}"),
        _ => format!("{collect} {reason}"),
    }
}

/// The text embedded for a listing: the Worker's `embed::listing_text`.
pub fn listing_text(title: &str, description: &str) -> String {
    if description.is_empty() {
        title.to_string()
    } else {
        format!("{title}\n{description}")
    }
}

/// Embeds texts through the local embedding service, one request; returns
/// the model name and one vector per text.
pub fn embed(agent: &ureq::Agent, embedder_url: &str, texts: &[&str]) -> Result<(String, Vec<Vec<f32>>)> {
    let body = serde_json::json!({ "texts": texts }).to_string();
    let mut response = agent
        .post(&format!("{embedder_url}/v1/embed"))
        .header("content-type", "application/json")
        .send(body.as_str())
        .with_context(|| format!("the embedder at {embedder_url} is unreachable (is the stack running?)"))?;
    let text = response.body_mut().read_to_string()?;
    if response.status() != 200 {
        bail!("the embedder answered {}: {text}", response.status());
    }
    let answer: serde_json::Value = serde_json::from_str(&text)?;
    let model = answer["model"].as_str().context("no model in the embedder's answer")?.to_string();
    let vectors = answer["vectors"].as_array().context("no vectors")?;
    if vectors.len() != texts.len() {
        bail!("the embedder returned {} vectors for {} texts", vectors.len(), texts.len());
    }
    let vectors = vectors
        .iter()
        .map(|v| {
            v.as_array()
                .context("a vector is not an array")?
                .iter()
                .map(|x| x.as_f64().map(|x| x as f32).context("a vector holds a non-number"))
                .collect::<Result<Vec<f32>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((model, vectors))
}

/// Texts per embedding request: the embedder pads a batch to its longest
/// text, and requests are made of texts of similar length (see `embed_all`).
const EMBED_BATCH: usize = 128;
/// Requests in flight: the embedder's matrix products use every core, but
/// the rest of a forward pass (GELU, softmax, layer norm, tokenizing) runs on
/// one, so two requests at once keep both cores of a small machine busy.
const EMBED_CONCURRENCY: usize = 2;

/// Embeds many texts: each distinct text once (generated listings repeat
/// themselves), sorted by length so that a batch pads little, in batches of
/// [`EMBED_BATCH`] with [`EMBED_CONCURRENCY`] requests in flight, with a
/// progress line. Returns the model and one vector per text, in order.
pub fn embed_all(embedder_url: &str, texts: &[String]) -> Result<(String, Vec<Vec<f32>>)> {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut distinct: Vec<&str> = Vec::new();
    let slots: Vec<usize> = texts
        .iter()
        .map(|t| {
            *index.entry(t.as_str()).or_insert_with(|| {
                distinct.push(t.as_str());
                distinct.len() - 1
            })
        })
        .collect();
    let mut order: Vec<usize> = (0..distinct.len()).collect();
    order.sort_by_key(|&i| distinct[i].len());
    let batches: Vec<&[usize]> = order.chunks(EMBED_BATCH).collect();
    let results: Mutex<Vec<Option<Vec<f32>>>> = Mutex::new(vec![None; distinct.len()]);
    let model: Mutex<Option<String>> = Mutex::new(None);
    let (next, done) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let started = Instant::now();
    let total = distinct.len();
    crate::ui::info(format!("embedding {} texts ({total} distinct) through {embedder_url}", texts.len()));
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..EMBED_CONCURRENCY)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .timeout_global(Some(Duration::from_secs(300)))
                        .http_status_as_error(false)
                        .build()
                        .into();
                    loop {
                        let b = next.fetch_add(1, Ordering::SeqCst);
                        let Some(batch) = batches.get(b) else { return Ok(()) };
                        if crate::interrupted() {
                            bail!("interrupted");
                        }
                        let batch_texts: Vec<&str> = batch.iter().map(|&i| distinct[i]).collect();
                        let (m, vectors) = embed(&agent, embedder_url, &batch_texts)?;
                        {
                            let mut known = model.lock().unwrap_or_else(|e| e.into_inner());
                            match known.as_deref() {
                                Some(k) if k != m => bail!("the embedder changed model mid-run: {k} then {m}"),
                                _ => *known = Some(m),
                            }
                        }
                        let mut results = results.lock().unwrap_or_else(|e| e.into_inner());
                        for (&i, v) in batch.iter().zip(vectors) {
                            results[i] = Some(v);
                        }
                        drop(results);
                        let finished = done.fetch_add(batch.len(), Ordering::SeqCst) + batch.len();
                        let rate = finished as f64 / started.elapsed().as_secs_f64().max(0.001);
                        let eta = (total - finished) as f64 / rate.max(0.001);
                        eprint!(
                            "\r  embedded {finished}/{total}  {}  {rate:.0}/s  ~{eta:.0}s left   ",
                            bar(finished as u64, total as u64)
                        );
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().map_err(|_| anyhow::anyhow!("an embedding thread panicked"))??;
        }
        Ok(())
    })?;
    if total > 0 {
        eprintln!();
    }
    crate::ui::info(format!(
        "embedded {total} distinct texts in {:.1}s ({:.0}/s)",
        started.elapsed().as_secs_f64(),
        total as f64 / started.elapsed().as_secs_f64().max(0.001)
    ));
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let distinct_vectors: Vec<Vec<f32>> = results.into_iter().map(|v| v.unwrap_or_default()).collect();
    let model = model.into_inner().unwrap_or_else(|e| e.into_inner()).unwrap_or_default();
    Ok((model, slots.iter().map(|&i| distinct_vectors[i].clone()).collect()))
}

/// Writes listings with their vectors in one binary `COPY` into a temporary
/// table, then one `INSERT ... SELECT` into `listings` (listings already
/// there are skipped). Returns how many were inserted.
pub fn insert(client: &mut postgres::Client, listings: &[Listing], vectors: &[Vec<f32>], model: &str) -> Result<u64> {
    use postgres::binary_copy::BinaryCopyInWriter;
    use postgres::types::{ToSql, Type};

    let mut tx = client.transaction()?;
    tx.batch_execute(
        "CREATE TEMPORARY TABLE seed_listings (id text, seller_id text, title text, description text, species text,
             breed text, age_months integer, region text, price_minor bigint, currency text, quantity integer,
             embedding real[]) ON COMMIT DROP",
    )?;
    let sink = tx.copy_in("COPY seed_listings FROM STDIN (FORMAT binary)")?;
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT4,
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::INT4,
        Type::FLOAT4_ARRAY,
    ];
    let mut writer = BinaryCopyInWriter::new(sink, &types);
    for (i, (l, vector)) in listings.iter().zip(vectors).enumerate() {
        let seller = format!("sel_seed{}", i % 97);
        let row: [&(dyn ToSql + Sync); 12] = [
            &l.id,
            &seller,
            &l.title,
            &l.description,
            &l.species,
            &l.breed,
            &l.age_months,
            &l.region,
            &l.price_minor,
            &l.currency,
            &l.quantity,
            vector,
        ];
        writer.write(&row)?;
    }
    writer.finish()?;
    let inserted = tx.execute(
        "INSERT INTO listings (id, seller_id, seller_account, title, description, species, breed, age_months, region,
             price_minor, currency, quantity, embedding, embedding_model)
         SELECT id, seller_id, 'acct_seed', title, description, species, breed, age_months, region,
             price_minor, currency, quantity, embedding::vector, $1
         FROM seed_listings ORDER BY id
         ON CONFLICT (id) DO NOTHING",
        &[&model],
    )?;
    tx.commit()?;
    Ok(inserted)
}

pub struct Target {
    pub database_url: String,
    pub embedder_url: String,
}

/// Writes listings `0..count` of `seed` (skipping those already there):
/// embeds those missing ([`embed_all`]), then bulk-inserts them ([`insert`]).
pub fn seed(target: &Target, seed: u64, count: u64) -> Result<()> {
    let mut client = postgres::Client::connect(&target.database_url, postgres::NoTls)
        .with_context(|| format!("cannot connect to {}", crate::postgres::redact(&target.database_url)))?;
    let started = Instant::now();
    let present: std::collections::HashSet<String> = client
        .query("SELECT id FROM listings WHERE id LIKE $1", &[&format!("lst_s{seed}n%")])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let listings: Vec<Listing> = (0..count).map(|i| generate(seed, i)).filter(|l| !present.contains(&l.id)).collect();
    let texts: Vec<String> = listings.iter().map(|l| listing_text(&l.title, &l.description)).collect();
    let (model, vectors) = embed_all(&target.embedder_url, &texts)?;
    let inserted = if listings.is_empty() { 0 } else { insert(&mut client, &listings, &vectors, &model)? };
    crate::ui::info(format!(
        "seeded {count} listings (seed {seed}; {inserted} new) in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn bar(done: u64, total: u64) -> String {
    let width = 30;
    let filled = (done * width / total.max(1)) as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width as usize - filled))
}

/// `cargo xtask seed-listings --count N [--seed S] [--database-url URL] [--embedder-url URL]`,
/// by default into the running dev stack.
pub fn main(args: &[String]) -> Result<()> {
    let mut count = None;
    let mut seed_value = 1u64;
    let mut database_url = crate::stack::Profile::Dev
        .database_url_override()
        .unwrap_or_else(|| crate::postgres::url(crate::stack::Profile::Dev.ports().postgres));
    let mut embedder_url = format!("http://127.0.0.1:{}", crate::stack::Profile::Dev.ports().embedder);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--count" => count = Some(value()?.parse::<u64>().context("--count takes a number")?),
            "--seed" => seed_value = value()?.parse().context("--seed takes a number")?,
            "--database-url" => database_url = value()?.clone(),
            "--embedder-url" => embedder_url = value()?.clone(),
            other => bail!("unknown argument {other}; usage: cargo xtask seed-listings --count N [--seed S] [--database-url URL] [--embedder-url URL]"),
        }
    }
    let count = count.context("usage: cargo xtask seed-listings --count N (with `cargo xtask dev` running)")?;
    crate::ui::info(format!(
        "seeding {count} listings into {} (embeddings from {embedder_url})",
        crate::postgres::redact(&database_url)
    ));
    seed(&Target { database_url, embedder_url }, seed_value, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_varied() {
        let a: Vec<_> = (0..500).map(|i| generate(1, i)).collect();
        let b: Vec<_> = (0..500).map(|i| generate(1, i)).collect();
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| x.title == y.title && x.description == y.description && x.price_minor == y.price_minor));
        let kinds: std::collections::HashSet<_> = a.iter().map(|l| l.kind).collect();
        let species: std::collections::HashSet<_> = a.iter().map(|l| l.species).collect();
        let currencies: std::collections::HashSet<_> = a.iter().map(|l| l.currency).collect();
        assert!(
            kinds.len() > 25 && species.len() >= 8 && currencies.len() == 5,
            "{kinds:?} {species:?} {currencies:?}"
        );
        for l in &a {
            assert!(!l.title.is_empty() && l.title.len() <= 200 && l.price_minor > 0 && l.quantity >= 1, "{l:?}");
            assert!(
                l.id.starts_with("lst_") && l.id[4..].bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
                "{}",
                l.id
            );
        }
    }
}
